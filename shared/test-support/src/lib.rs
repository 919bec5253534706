//! Test helpers: real Redis servers and a real Redis Cluster on free loopback ports.
//!
//! Everything binds 127.0.0.1 only and lives in a temporary directory that is removed with the
//! helper. Processes are killed when their handle is dropped, so a failing test leaves nothing
//! running. The `redis-server` and `redis-cli` binaries are taken from `REDIS_SERVER` /
//! `REDIS_CLI` when set, else from `PATH` (`scripts/ensure-deps` installs them on CI).
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    // The kernel may hand the same port to two `bind(0)` calls made close together once the first
    // is closed again; two tests of one binary starting servers in parallel then raced for one
    // port (one server failed to bind, its test talked to the other's server until that one
    // stopped: "connection refused"). So a port is handed out at most once per process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        // Binding port 0 on loopback cannot fail on a working machine; fall back to a random
        // high port if it somehow does (the caller's start then retries).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|_| 20_000 + (rand_u16() % 20_000));
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    20_000 + (rand_u16() % 20_000)
}

/// A port `p` such that both `p` and `p + 10000` (the cluster bus) are free.
fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let p = 15_000 + (rand_u16() % 35_000);
        let a = TcpListener::bind(("127.0.0.1", p));
        let b = TcpListener::bind(("127.0.0.1", p + 10_000));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    free_port()
}

fn rand_u16() -> u16 {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

/// A key prefix no other test uses, so tests can share one Redis.
pub fn unique_prefix(tag: &str) -> String {
    format!(
        "t-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn binary(env: &str, name: &str) -> PathBuf {
    // Test helpers may read the environment: this is how CI points at other binaries.
    #[allow(clippy::disallowed_methods)]
    let configured = std::env::var_os(env);
    configured.map(PathBuf::from).unwrap_or_else(|| name.into())
}

/// Options of a single Redis server.
#[derive(Debug, Clone, Default)]
pub struct RedisServerOptions {
    /// Persist every write to an append-only file (fsync always), so a restart loses nothing.
    pub appendonly: bool,
    /// Require this password (`requirepass`).
    pub password: Option<String>,
}

/// A `redis-server` process on a free loopback port, killed on drop.
pub struct RedisServer {
    port: u16,
    options: RedisServerOptions,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence or password.
    pub async fn start() -> Result<Self> {
        Self::start_with(RedisServerOptions::default()).await
    }

    /// Starts a server with the given options.
    pub async fn start_with(options: RedisServerOptions) -> Result<Self> {
        let mut last_error = anyhow!("redis-server did not start");
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                options: options.clone(),
                dir: tempfile::tempdir().context("creating a directory for redis-server")?,
                child: None,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--port".to_string(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        if self.options.appendonly {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        if let Some(password) = &self.options.password {
            args.extend(["--requirepass".to_string(), password.clone()]);
        }
        args
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = binary("REDIS_SERVER", "redis-server");
        let child = Command::new(&bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install redis-server, or set REDIS_SERVER)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "redis-server on port {} exited at start ({status}): {}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            if ping(addr).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill().await;
                bail!(
                    "redis-server on port {} did not answer within {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// `redis://127.0.0.1:<port>` (with the password when one is set).
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The URL without credentials.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (load tests read its RSS and CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: an abrupt crash, not a clean shutdown). Its data directory
    /// stays, so [`RedisServer::restart`] brings back what was persisted.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        // The port was just released; another process grabbing it in between is very unlikely.
        let mut last = anyhow!("restart failed");
        for _ in 0..20 {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Sends `PING` and says whether the server answered (a `NOAUTH` error counts as an answer).
async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        let reply = &buf[..n];
        Some(reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// A real Redis Cluster of three masters (no replicas) on loopback, every slot covered.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub async fn start() -> Result<Self> {
        let mut last = anyhow!("the cluster did not start");
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start() -> Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut node = RedisServer {
                port: free_cluster_port(),
                options: RedisServerOptions::default(),
                dir: tempfile::tempdir().context("creating a directory for a cluster node")?,
                child: None,
            };
            node.spawn_cluster_node().await?;
            nodes.push(node);
        }
        let cli = binary("REDIS_CLI", "redis-cli");
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for node in &nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .context("redis-cli --cluster create timed out")?
            .with_context(|| {
                format!(
                    "running {} (install redis-tools, or set REDIS_CLI)",
                    cli.display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// Waits until every node reports `cluster_state:ok`.
    async fn wait_ok(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all_ok = true;
            for node in &self.nodes {
                if !cluster_state_ok(node.port).await {
                    all_ok = false;
                    break;
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not reach cluster_state:ok within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The seed URLs of the three masters.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The ports of the three masters.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

impl RedisServer {
    async fn spawn_cluster_node(&mut self) -> Result<()> {
        let bin = binary("REDIS_SERVER", "redis-server");
        let mut args = self.args();
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]
            .map(String::from),
        );
        let child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(addr).await {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "cluster node exited at start ({status}): {}",
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("cluster node on port {} did not start", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn cluster_state_ok(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"CLUSTER INFO\r\n").await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).contains("cluster_state:ok"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// A moto server (the AWS stand-in: IoT, IoT data plane, Kinesis, ECS…) on a free loopback
/// port, killed on drop. Found through `MOTO_SERVER`, else the venv `scripts/ensure-deps` makes
/// (`$XDG_CACHE_HOME` or `~/.cache`, then `twinbridge/venv/bin/moto_server`), else `PATH`.
pub struct MotoServer {
    port: u16,
    child: Child,
}

/// Where a stand-in lives: `$<var>` when set (first, true), else `<cache>/twinbridge/<rel>` (cache
/// = `$XDG_CACHE_HOME` or `~/.cache`), where `scripts/ensure-deps` installs it (false).
fn stand_in_path(var: &str, rel: &str) -> (PathBuf, bool) {
    #[allow(clippy::disallowed_methods)] // test helpers locate binaries through the environment
    let (configured, cache, home) = (
        std::env::var_os(var),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    );
    if let Some(p) = configured {
        return (PathBuf::from(p), true);
    }
    let cached = cache
        .map(PathBuf::from)
        .or_else(|| home.map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("twinbridge")
        .join(rel);
    (cached, false)
}

/// Starts a server on a free loopback port (up to three ports), waiting until it listens.
async fn spawn_listening(
    what: &str,
    within: Duration,
    command: impl Fn(u16) -> Command,
) -> Result<(u16, Child)> {
    let mut last = anyhow!("{what} did not start");
    for _ in 0..3 {
        let port = free_port();
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {what} (run scripts/ensure-deps)"))?;
        match wait_listening(&mut child, port, within, what).await {
            Ok(()) => return Ok((port, child)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn moto_binary() -> PathBuf {
    match stand_in_path("MOTO_SERVER", "venv/bin/moto_server") {
        (p, true) => p,
        (p, false) if p.is_file() => p,
        _ => PathBuf::from("moto_server"),
    }
}

impl MotoServer {
    pub async fn start() -> Result<Self> {
        let bin = moto_binary();
        let (port, child) = spawn_listening("moto_server", Duration::from_secs(30), |port| {
            let mut c = Command::new(&bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            c
        })
        .await?;
        Ok(MotoServer { port, child })
    }

    /// `http://127.0.0.1:<port>`: the endpoint override for every AWS client in tests.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls moto's REST API for one service without real signing (moto routes by the service
    /// named in the credential scope and does not check signatures).
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential=test/20240101/us-east-1/{service}/aws4_request, SignedHeaders=host, \
             Signature=0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("moto answered garbage: {text}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// kinesalite (the Kinesis stand-in that reshards faithfully) on a free loopback port, killed on
/// drop. Found through `KINESALITE_DIR` (a directory holding `node_modules/kinesalite`), else the
/// one `scripts/ensure-deps` makes (`$XDG_CACHE_HOME` or `~/.cache`, then `twinbridge/node`).
pub struct Kinesalite {
    port: u16,
    child: Child,
}

fn kinesalite_dir() -> PathBuf {
    stand_in_path("KINESALITE_DIR", "node").0
}

impl Kinesalite {
    pub async fn start() -> Result<Self> {
        let dir = kinesalite_dir();
        if !dir.join("node_modules/kinesalite").is_dir() {
            bail!(
                "kinesalite is not installed in {} (run scripts/ensure-deps, or set KINESALITE_DIR)",
                dir.display()
            );
        }
        let (port, child) = spawn_listening("kinesalite", Duration::from_secs(20), |port| {
            let mut c = Command::new("node");
            c.arg("-e")
                .arg(format!(
                    "require('kinesalite')({{createStreamMs:50,deleteStreamMs:50,\
                     updateStreamMs:50,shardLimit:100}}).listen({port},'127.0.0.1')"
                ))
                .current_dir(&dir);
            c
        })
        .await?;
        Ok(Kinesalite { port, child })
    }

    /// `http://127.0.0.1:<port>`: the Kinesis endpoint override in tests.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until `port` accepts connections; kills `child` and fails if it exits or takes longer
/// than `within`.
async fn wait_listening(child: &mut Child, port: u16, within: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start: {status}");
        }
        // A connection whose local port is the port itself is Linux's TCP self-connect (the
        // ephemeral port picked for the attempt happened to be `port`, nothing listening): it
        // proves nothing, and once made the tests saw "connection refused" a moment later.
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            if stream.local_addr().map(|a| a.port()).ok() != Some(port) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!("{what} on port {port} did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Mosquitto broker on a free loopback port (anonymous, no persistence), killed on drop.
/// Found through `MOSQUITTO`, else `/usr/sbin/mosquitto`, else `PATH`.
pub struct Mosquitto {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Result<Self> {
        #[allow(clippy::disallowed_methods)] // test helpers locate binaries through the environment
        let bin = std::env::var_os("MOSQUITTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let sbin = PathBuf::from("/usr/sbin/mosquitto");
                if sbin.is_file() {
                    sbin
                } else {
                    PathBuf::from("mosquitto")
                }
            });
        let mut last = anyhow!("mosquitto did not start");
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
            )?;
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (install mosquitto, or set MOSQUITTO)",
                        bin.display()
                    )
                })?;
            match wait_listening(&mut child, port, Duration::from_secs(10), "mosquitto").await {
                Ok(()) => {
                    return Ok(Mosquitto {
                        port,
                        child,
                        _dir: dir,
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// What a browser test needs: Debian's Chromium and the `playwright-core` Node package that drives
/// it, both installed by `scripts/ensure-deps` (nothing is downloaded at test time).
#[derive(Debug, Clone)]
pub struct BrowserTools {
    /// `CHROMIUM` when set, else `/usr/bin/chromium`.
    pub chromium: PathBuf,
    /// The `node_modules` directory holding `playwright-core`, for `NODE_PATH`: under
    /// `PLAYWRIGHT_DIR` when set, else under `<cache>/twinbridge/node` (as kinesalite).
    pub node_modules: PathBuf,
}

/// Finds Chromium and `playwright-core`, or says how to install them.
pub fn browser_tools() -> Result<BrowserTools> {
    #[allow(clippy::disallowed_methods)] // test helpers locate binaries through the environment
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        bail!(
            "no Chromium at {} (run scripts/ensure-deps: Debian's chromium and chromium-driver, \
             or set CHROMIUM)",
            chromium.display()
        );
    }
    let node_modules = stand_in_path("PLAYWRIGHT_DIR", "node")
        .0
        .join("node_modules");
    if !node_modules.join("playwright-core").is_dir() {
        bail!(
            "playwright-core is not installed in {} (run scripts/ensure-deps, or set \
             PLAYWRIGHT_DIR)",
            node_modules.display()
        );
    }
    Ok(BrowserTools {
        chromium,
        node_modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_starts_stops_and_restarts_with_its_data() {
        let mut server = RedisServer::start_with(RedisServerOptions {
            appendonly: true,
            password: None,
        })
        .await
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(ping(addr).await);
        server.stop().await;
        assert!(!ping(addr).await);
        server.restart().await.unwrap();
        assert!(ping(addr).await);
    }

    #[tokio::test]
    async fn moto_starts_and_answers() {
        let moto = MotoServer::start().await.unwrap();
        let (status, body) = moto
            .call("iot", "POST", "/things/probe", "{}")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("probe"), "{body}");
    }

    #[test]
    fn prefixes_are_unique() {
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
    }
}
