//! The `process` launcher: workers are child processes of the scheduler (`twinbridge worker`,
//! by default the scheduler's own executable), one per slot `0..desired`. A round restarts
//! children that exited, starts missing ones and stops surplus ones (the highest slots) with
//! SIGTERM, then SIGKILL after `stop_grace`. Slot `i` listens on `listen_host:first_port + i`.
//!
//! Workers share the scheduler's store whichever way it was configured (file, environment,
//! `--redis`): the store settings are passed to them as `TWINBRIDGE_STORE__…` variables, and the
//! scheduler's configuration file (if any) as `--config <file>`.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::future::join_all;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use twinbridge_config::{Config, StoreBackend};

use super::{Launcher, LauncherError, LauncherStatus};

/// How the workers are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSettings {
    pub program: PathBuf,
    /// Every argument, `--config <file>` included.
    pub args: Vec<String>,
    /// Set on top of the scheduler's own environment, in order.
    pub env: Vec<(String, String)>,
    pub listen_host: std::net::IpAddr,
    /// Slot `i` listens on `first_port + i`; any free port when 0.
    pub first_port: u16,
    pub stop_grace: Duration,
}

impl ProcessSettings {
    /// The settings `[scheduler.launcher.process]` and the scheduler's own store describe.
    pub fn from_config(config: &Config) -> Result<Self, LauncherError> {
        let p = &config.scheduler.launcher.process;
        let program = match &p.program {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(|e| {
                LauncherError::Process(format!(
                    "cannot find the scheduler's own executable (set \
                     scheduler.launcher.process.program): {e}"
                ))
            })?,
        };
        let mut args = p.args.clone();
        if let Some(file) = &config.source_file {
            let has_config = args
                .iter()
                .any(|a| a == "--config" || a == "-c" || a.starts_with("--config="));
            if !has_config {
                args.push("--config".into());
                args.push(file.display().to_string());
            }
        }
        let s = &config.store;
        let mut env = Vec::new();
        if s.backend == StoreBackend::Redis {
            let urls: Vec<String> = s
                .urls
                .iter()
                .map(|u| format!("\"{}\"", u.replace('"', "")))
                .collect();
            env.push(("TWINBRIDGE_STORE__BACKEND".into(), "redis".into()));
            env.push((
                "TWINBRIDGE_STORE__URLS".into(),
                format!("[{}]", urls.join(", ")),
            ));
            env.push(("TWINBRIDGE_STORE__CLUSTER".into(), s.cluster.to_string()));
        }
        env.push(("TWINBRIDGE_STORE__PREFIX".into(), s.prefix.clone()));
        env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(ProcessSettings {
            program,
            args,
            env,
            listen_host: p.listen_host,
            first_port: p.first_port,
            stop_grace: p.stop_grace,
        })
    }

    fn listen(&self, slot: usize) -> std::net::SocketAddr {
        let port = if self.first_port == 0 {
            0
        } else {
            u16::try_from(slot)
                .ok()
                .and_then(|s| self.first_port.checked_add(s))
                .unwrap_or(0)
        };
        std::net::SocketAddr::new(self.listen_host, port)
    }
}

/// One running child.
struct Worker {
    child: Child,
    pid: u32,
}

/// Runs workers as child processes.
pub struct ProcessLauncher {
    settings: ProcessSettings,
    slots: Mutex<Vec<Option<Worker>>>,
}

impl ProcessLauncher {
    pub fn new(settings: ProcessSettings) -> Self {
        ProcessLauncher {
            settings,
            slots: Mutex::new(Vec::new()),
        }
    }

    /// The pids of the running children, by slot (for operators and tests).
    pub async fn pids(&self) -> Vec<Option<u32>> {
        self.slots
            .lock()
            .await
            .iter()
            .map(|s| s.as_ref().map(|w| w.pid))
            .collect()
    }

    fn spawn(&self, slot: usize) -> Result<Worker, LauncherError> {
        let s = &self.settings;
        let listen = s.listen(slot);
        let child = Command::new(&s.program)
            .args(&s.args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .env("TWINBRIDGE_WORKER__LISTEN", listen.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LauncherError::Spawn {
                program: s.program.display().to_string(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(slot, pid, %listen, program = %s.program.display(), "worker started");
        Ok(Worker { child, pid })
    }
}

/// SIGTERM, then SIGKILL if the worker is still there after `grace`.
async fn stop(slot: usize, mut w: Worker, grace: Duration) -> Option<ExitStatus> {
    let signalled = i32::try_from(w.pid)
        .ok()
        .filter(|p| *p > 0)
        .map(|p| kill(Pid::from_raw(p), Signal::SIGTERM));
    match signalled {
        Some(Ok(())) => {
            if let Ok(Ok(status)) = tokio::time::timeout(grace, w.child.wait()).await {
                tracing::info!(slot, pid = w.pid, %status, "worker stopped");
                return Some(status);
            }
            tracing::warn!(
                slot,
                pid = w.pid,
                grace_ms = grace.as_millis() as u64,
                "worker did not stop within the grace period; killing it"
            );
        }
        Some(Err(e)) => tracing::warn!(slot, pid = w.pid, error = %e, "cannot send SIGTERM"),
        None => {}
    }
    let _ = w.child.kill().await;
    let status = w.child.wait().await.ok();
    tracing::info!(slot, pid = w.pid, status = ?status, "worker killed");
    status
}

#[async_trait::async_trait]
impl Launcher for ProcessLauncher {
    async fn reconcile(&self, desired: u32) -> Result<LauncherStatus, LauncherError> {
        let mut slots = self.slots.lock().await;
        let mut status = LauncherStatus {
            desired,
            ..LauncherStatus::default()
        };
        // Reap children that exited.
        for (slot, entry) in slots.iter_mut().enumerate() {
            let Some(w) = entry else { continue };
            match w.child.try_wait() {
                Ok(Some(exit)) => {
                    tracing::warn!(slot, pid = w.pid, status = %exit, "worker exited");
                    *entry = None;
                    status.stopped += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(slot, pid = w.pid, error = %e, "cannot check worker"),
            }
        }
        // Stop the surplus (the highest slots), all at once.
        let desired_slots = desired as usize;
        if slots.len() > desired_slots {
            let grace = self.settings.stop_grace;
            let surplus: Vec<(usize, Worker)> = slots
                .drain(desired_slots..)
                .enumerate()
                .filter_map(|(i, w)| w.map(|w| (desired_slots + i, w)))
                .collect();
            status.stopped += surplus.len() as u32;
            join_all(
                surplus
                    .into_iter()
                    .rev()
                    .map(|(slot, w)| stop(slot, w, grace)),
            )
            .await;
        }
        // Start the missing ones (again, for the ones that exited).
        slots.resize_with(desired_slots, || None);
        let mut first_error = None;
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry.is_some() {
                status.running += 1;
                continue;
            }
            match self.spawn(slot) {
                Ok(w) => {
                    *entry = Some(w);
                    status.starting += 1;
                }
                Err(e) => {
                    tracing::warn!(slot, error = %e, "cannot start worker");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(status),
        }
    }

    async fn shutdown(&self) {
        let workers: Vec<(usize, Worker)> = self
            .slots
            .lock()
            .await
            .drain(..)
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (i, w)))
            .collect();
        if workers.is_empty() {
            return;
        }
        tracing::info!(workers = workers.len(), "stopping workers");
        let grace = self.settings.stop_grace;
        join_all(workers.into_iter().map(|(slot, w)| stop(slot, w, grace))).await;
    }

    fn kind(&self) -> &'static str {
        "process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_carry_the_config_file_and_the_store() {
        let mut config = Config::default();
        config.store.backend = StoreBackend::Redis;
        config.store.urls = vec!["redis://10.0.0.1:6379".into()];
        config.store.prefix = "fleet-a".into();
        config.source_file = Some(PathBuf::from("/etc/twinbridge.toml"));
        config.scheduler.launcher.process.program = Some(PathBuf::from("/usr/bin/twinbridge"));
        config
            .scheduler
            .launcher
            .process
            .env
            .insert("RUST_LOG".into(), "debug".into());
        let s = ProcessSettings::from_config(&config).unwrap();
        assert_eq!(s.program, PathBuf::from("/usr/bin/twinbridge"));
        assert_eq!(s.args, ["worker", "--config", "/etc/twinbridge.toml"]);
        assert!(s.env.contains(&(
            "TWINBRIDGE_STORE__URLS".into(),
            "[\"redis://10.0.0.1:6379\"]".into()
        )));
        assert!(s
            .env
            .contains(&("TWINBRIDGE_STORE__PREFIX".into(), "fleet-a".into())));
        assert_eq!(s.env.last(), Some(&("RUST_LOG".into(), "debug".into())));

        config.source_file = None;
        let s = ProcessSettings::from_config(&config).unwrap();
        assert_eq!(s.args, ["worker"]);
    }

    #[test]
    fn slots_listen_on_consecutive_ports() {
        let mut config = Config::default();
        config.scheduler.launcher.process.program = Some(PathBuf::from("x"));
        let mut s = ProcessSettings::from_config(&config).unwrap();
        assert_eq!(s.listen(3).to_string(), "127.0.0.1:0");
        s.first_port = 9100;
        assert_eq!(s.listen(3).to_string(), "127.0.0.1:9103");
        s.first_port = u16::MAX;
        assert_eq!(s.listen(3).port(), 0, "overflow falls back to any port");
    }
}
