//! The binary's command line and runtime basics, exercised as a real process.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twinbridge_test_support::{free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_twinbridge");

fn config_file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

#[test]
fn config_check_accepts_a_valid_file() {
    let f = config_file("[store]\nbackend = \"redis\"\nurls = [\"redis://127.0.0.1:1\"]\n");
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn config_check_names_every_bad_key_and_exits_64() {
    let f = config_file("[store]\nbakend = \"redis\"\n");
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.bakend"), "{err}");
    assert!(err.contains("unknown key"), "{err}");

    let f = config_file("[scheduler]\nshard_capacity = 0\n[worker]\nmax_shards = 0\n");
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scheduler.shard_capacity"), "{err}");
    assert!(err.contains("worker.max_shards"), "{err}");
}

#[test]
fn wrong_type_from_the_environment_is_named() {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("TWINBRIDGE_ROUTER__MAX_PAYLOAD_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("router.max_payload_bytes"), "{err}");
}

#[test]
fn command_line_variables_are_not_config_keys() {
    let f = config_file("[log]\nlevel = \"info\"\n");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("TWINBRIDGE_CONFIG", f.path())
        .env("TWINBRIDGE_ADMIN_URL", "http://127.0.0.1:1")
        .env("TWINBRIDGE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn printed_config_redacts_secrets() {
    let out = Command::new(BIN)
        .args(["config", "check", "--print"])
        .env("TWINBRIDGE_PLATFORM__APP_KEY", "very-secret-app-key")
        .env(
            "TWINBRIDGE_STORE__URLS",
            "[\"redis://:redis-pass@127.0.0.1:6380\"]",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("very-secret-app-key"), "{all}");
    assert!(!all.contains("redis-pass"), "{all}");
    assert!(all.contains("***"), "{all}");
}

async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn wait_for_status(client: &reqwest::Client, url: &str, want: u16, within: Duration) {
    let start = Instant::now();
    loop {
        if status(client, url).await == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{url} did not answer {want} within {within:?} (last: {:?})",
            status(client, url).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker started while Redis is down stays alive and unready, logs its retries, becomes ready
/// when Redis comes up, and stops promptly on SIGTERM.
#[tokio::test]
async fn worker_waits_for_redis_then_stops_on_sigterm() {
    let mut redis = RedisServer::start().await.unwrap();
    let redis_port = redis.port();
    redis.stop().await;

    let http_port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args(["worker", "--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--redis", &format!("redis://127.0.0.1:{redis_port}")])
        .env("TWINBRIDGE_STORE__CONNECT_TIMEOUT", "500ms")
        .env("TWINBRIDGE_STORE__PREFIX", "cli-test")
        .env("TWINBRIDGE_PLATFORM__APP_KEY", "cli-test-key")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    wait_for_status(
        &client,
        &format!("{base}/healthz"),
        200,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status(&client, &format!("{base}/readyz")).await, Some(503));
    // Still unready a while later: it keeps retrying, it does not exit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&client, &format!("{base}/readyz")).await, Some(503));
    assert!(
        child.try_wait().unwrap().is_none(),
        "worker exited while Redis was down"
    );

    redis.restart().await.unwrap();
    wait_for_status(
        &client,
        &format!("{base}/readyz"),
        200,
        Duration::from_secs(15),
    )
    .await;

    let pid = child.id().unwrap();
    let stopped = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("worker did not stop within 5 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(stopped.elapsed() < Duration::from_secs(5));

    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("store unavailable, retrying"), "{stderr}");
    assert!(stderr.contains("store connected"), "{stderr}");
}

/// A worker without a platform application key refuses to start and names the key.
#[tokio::test]
async fn worker_without_an_app_key_names_the_missing_key() {
    let out = tokio::process::Command::new(BIN)
        .args(["worker", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("TWINBRIDGE_PLATFORM__APP_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("platform.app_key"), "{stderr}");
}

/// `twinbridge demo` runs the whole fleet on the embedded store and delivers device messages to
/// the simulated ThingWorx.
#[tokio::test]
async fn demo_delivers_device_messages_end_to_end() {
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--things", "20", "--rate", "200", "--duration", "4"])
        .args(["--sim-listen", &format!("127.0.0.1:{}", free_port())])
        .env(
            "TWINBRIDGE_ROUTER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "TWINBRIDGE_WORKER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "TWINBRIDGE_SCHEDULER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("fleet ready"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    // "stopped: N messages sent, M property values delivered to ThingWorx, D dead letters"
    let numbers: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{last}");
    let (sent, delivered, dead) = (numbers[0], numbers[1], numbers[2]);
    assert!(sent > 100, "{last}");
    assert!(
        delivered >= sent * 4,
        "every message carries 5 values (presence 1-2): {last}"
    );
    assert_eq!(dead, 0, "{last}");
}
