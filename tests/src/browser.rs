//! A headless Chromium page driven from a test: `tests/browser/driver.js` (Node, `playwright-core`)
//! runs as a child process and takes one JSON command per line. Every call waits with a timeout;
//! the browser is killed when the handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long the driver may take for one command (its own waits are shorter).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The driver script, beside this crate.
fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/driver.js")
}

/// One browser page.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium (headless, no network beyond what the page asks for) with one page.
    pub async fn launch() -> Result<Browser> {
        let tools = twinbridge_test_support::browser_tools()?;
        let mut child = Command::new("node")
            .arg(driver_script())
            .env("NODE_PATH", &tools.node_modules)
            .env("CHROMIUM", &tools.chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (run scripts/ensure-deps)")?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        Ok(Browser {
            child,
            stdin,
            answers: BufReader::new(stdout).lines(),
            next_id: 1,
        })
    }

    /// Sends one command (`{"op": ..., ...}`) and returns its value, or the driver's error.
    pub async fn call(&mut self, mut command: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let op = command["op"].as_str().unwrap_or("?").to_string();
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.answers.next_line())
            .await
            .map_err(|_| anyhow!("browser: `{op}` got no answer within {CALL_TIMEOUT:?}"))??
            .ok_or_else(|| anyhow!("browser: the driver exited during `{op}`"))?;
        let answer: Value = serde_json::from_str(&answer)
            .with_context(|| format!("browser: `{op}` answered {answer}"))?;
        if answer["id"] != json!(id) {
            bail!("browser: answer {answer} is not for command {id}");
        }
        if answer["ok"] == json!(true) {
            Ok(answer["value"].clone())
        } else {
            bail!("browser: {command}: {}", answer["error"])
        }
    }

    pub async fn goto(&mut self, url: &str) -> Result<Value> {
        self.call(json!({"op": "goto", "url": url})).await
    }

    pub async fn fill(&mut self, selector: &str, value: &str) -> Result<()> {
        self.call(json!({"op": "fill", "selector": selector, "value": value}))
            .await
            .map(drop)
    }

    pub async fn click(&mut self, selector: &str) -> Result<()> {
        self.call(json!({"op": "click", "selector": selector}))
            .await
            .map(drop)
    }

    pub async fn check(&mut self, selector: &str) -> Result<()> {
        self.call(json!({"op": "check", "selector": selector}))
            .await
            .map(drop)
    }

    /// Waits until `selector` is visible.
    pub async fn wait_visible(&mut self, selector: &str) -> Result<()> {
        self.call(json!({"op": "wait", "selector": selector}))
            .await
            .map(drop)
    }

    /// Waits until the text of `selector` contains `text`, and returns that text.
    pub async fn wait_text(&mut self, selector: &str, text: &str) -> Result<String> {
        let v = self
            .call(json!({"op": "wait_text", "selector": selector, "contains": text}))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    pub async fn text(&mut self, selector: &str) -> Result<String> {
        let v = self
            .call(json!({"op": "text", "selector": selector}))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// An attribute of the first match, if it has one.
    pub async fn attr(&mut self, selector: &str, name: &str) -> Result<Option<String>> {
        let v = self
            .call(json!({"op": "attr", "selector": selector, "name": name}))
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    pub async fn count(&mut self, selector: &str) -> Result<u64> {
        let v = self
            .call(json!({"op": "count", "selector": selector}))
            .await?;
        v.as_u64().ok_or_else(|| anyhow!("count: {v}"))
    }

    pub async fn visible(&mut self, selector: &str) -> Result<bool> {
        let v = self
            .call(json!({"op": "visible", "selector": selector}))
            .await?;
        Ok(v == json!(true))
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self, path: &Path, full_page: bool) -> Result<()> {
        self.call(json!({"op": "screenshot", "path": path, "full_page": full_page}))
            .await
            .map(drop)
    }

    /// `{"page_errors": [...], "console": [...]}`: uncaught errors and console errors/warnings
    /// (Content-Security-Policy violations are reported there) since the page opened.
    pub async fn problems(&mut self) -> Result<Value> {
        self.call(json!({"op": "problems"})).await
    }

    /// Closes the browser and waits for the driver to exit.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.call(json!({"op": "close"})).await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                let _ = self.child.kill().await;
            }
        }
        Ok(())
    }
}
