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

async fn run_demo(extra: &[&str]) -> (String, Vec<u64>) {
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--things", "20", "--rate", "200", "--duration", "4"])
        .args(["--workers", "2", "--edits", "10"])
        .args(["--sim-listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("fleet ready"), "{stdout}");
    assert!(stdout.contains("admin API"), "{stdout}");
    // The live status line, once a second.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Things 20 · shards 1 · workers 2 · in ")),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default().to_string();
    // "stopped: N messages sent, M property values delivered to ThingWorx, W shadow writes
    // (T Things), D dead letters"
    let numbers: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 5, "{last}");
    (stdout, numbers)
}

/// `twinbridge demo` runs the whole fleet on the embedded store: device messages reach the
/// simulated ThingWorx, simulated user edits reach the embedded shadow store.
#[tokio::test]
async fn demo_delivers_device_messages_end_to_end() {
    let (stdout, numbers) = run_demo(&[]).await;
    assert!(stdout.contains("embedded store"), "{stdout}");
    assert!(stdout.contains("embedded shadow store"), "{stdout}");
    let (sent, delivered, shadow_writes, dead) = (numbers[0], numbers[1], numbers[2], numbers[4]);
    assert!(sent > 100, "{numbers:?}");
    assert!(
        delivered >= sent * 4,
        "every message carries 5 values (presence 1-2): {numbers:?}"
    );
    assert!(shadow_writes > 5, "user edits written back: {numbers:?}");
    assert_eq!(dead, 0, "{numbers:?}");
}

/// `--redis URL`: the same demo on a real Redis.
#[tokio::test]
async fn demo_runs_on_redis() {
    let redis = RedisServer::start().await.unwrap();
    let (stdout, numbers) = run_demo(&["--redis", &redis.url()]).await;
    assert!(
        stdout.contains(&format!("Redis {}", redis.url())),
        "{stdout}"
    );
    let (sent, delivered, dead) = (numbers[0], numbers[1], numbers[4]);
    assert!(sent > 100 && delivered >= sent * 4, "{numbers:?}");
    assert_eq!(dead, 0, "{numbers:?}");
}

/// Ctrl-C stops the whole demo cleanly within 2 s.
#[tokio::test]
async fn demo_stops_on_ctrl_c_within_two_seconds() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--things", "20", "--rate", "500"])
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
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Running with traffic: the first status lines.
    let mut status_lines = 0;
    while status_lines < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("demo output")
            .unwrap()
            .expect("demo still running");
        if line.starts_with("Things ") {
            status_lines += 1;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let asked = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("stopped")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        asked.elapsed()
    );
}
