//! Helpers of the fleet tests: the `twinbridge` binary next to the test executable, service
//! processes started from one TOML configuration with their logs kept in a directory (printed
//! when a test fails), killed on drop; a headless browser page ([`browser`]) and the directory
//! test artefacts (screenshots) are saved in.

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// The `twinbridge` binary Cargo built beside this executable: `target/<profile>/twinbridge`, seen
/// from a test (`target/<profile>/deps/`) or from another binary (`target/<profile>/`).
pub fn twinbridge_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().context("executable has no directory")?;
    for dir in [Some(here), here.parent()].into_iter().flatten() {
        let bin = dir.join("twinbridge");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no twinbridge binary beside {}: build it with `cargo build -p twinbridge` (cargo test \
         --workspace does)",
        exe.display()
    )
}

/// `<target>/artifacts` (created): where tests save what a person may want to look at after a
/// run, such as screenshots. `<target>` is the Cargo target directory this test was built in.
pub fn artifacts_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target
    let target = exe
        .ancestors()
        .nth(3)
        .context("test executable is not inside a Cargo target directory")?;
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One service process.
pub struct Service {
    pub name: String,
    pub listen: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `twinbridge <service> --config <config> --listen <listen>` with extra environment,
    /// logging to `<dir>/<name>.log`.
    pub fn start(
        dir: &Path,
        name: &str,
        service: &str,
        config: &Path,
        listen: &str,
        env: &[(&str, String)],
    ) -> Result<Service> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(twinbridge_bin()?);
        cmd.arg(service)
            .args(["--config", &config.display().to_string()])
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Service {
            name: name.into(),
            listen: listen.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9`: no graceful step at all.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait for a clean exit (at most `within`).
    pub async fn stop(&mut self, within: Duration) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                Ok(())
            }
            Err(_) => bail!("{} did not stop within {within:?}", self.name),
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.listen);
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited with {status}:\n{}", self.name, self.log_tail(30));
            }
            if start.elapsed() > within {
                bail!("{} not ready:\n{}", self.name, self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `[log]`, `[store]` and `[platform]` sections every fleet test's processes share: Redis at
/// `redis_url` under `prefix`, the platform simulator at `platform_url` with `app_key`. A test
/// appends its own `[scheduler]`, `[router]` and `[worker]` sections.
pub fn fleet_config_base(
    redis_url: &str,
    prefix: &str,
    platform_url: &str,
    app_key: &str,
) -> String {
    format!(
        r#"
[log]
level = "warn"

[store]
backend = "redis"
urls = ["{redis_url}"]
prefix = "{prefix}"

[platform]
url = "{platform_url}"
app_key = "{app_key}"
"#
    )
}

/// Polls `check` every 100 ms until it holds; fails with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > within {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
