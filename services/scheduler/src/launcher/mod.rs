//! Worker launchers: the leader keeps the number of workers at the desired size for the current
//! shard count — `ceil(shards / shards_per_worker)`, clamped to `min_workers..=max_workers` (see
//! [`desired_workers`]).
//!
//! - [`process`]: `twinbridge worker` child processes of the scheduler; dead ones are restarted.
//! - [`ecs`]: ECS tasks (`RunTask` / `StopTask`, Fargate with `awsvpc` networking).
//! - [`kubernetes`]: the `scale` subresource of a worker StatefulSet or Deployment.
//! - [`external`]: launches nothing (workers are run by something else); reports the desired size.

pub mod ecs;
pub mod external;
pub mod kubernetes;
pub mod process;

use serde::Serialize;
use twinbridge_config::{Config, LauncherKind};

/// What a reconcile round found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LauncherStatus {
    /// The size the fleet was reconciled to.
    pub desired: u32,
    /// Workers up (ECS: `RUNNING` tasks; kubernetes: replicas the workload reports).
    pub running: u32,
    /// Workers started and not up yet (process: started in this round; ECS: `PROVISIONING` /
    /// `PENDING` tasks; kubernetes: replicas asked for beyond the reported ones).
    pub starting: u32,
    /// Workers stopped in this round: surplus ones, and (process) ones found dead.
    pub stopped: u32,
}

/// The launcher as `GET /v1/fleet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LauncherReport {
    pub kind: &'static str,
    /// Only the leader launches.
    pub leading: bool,
    /// The last round's result (`desired`, `running`, `starting`, `stopped`).
    pub last: Option<LauncherStatus>,
    /// The last round's error, if it failed.
    pub error: Option<String>,
}

/// Why a reconcile round (or building a launcher) failed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("process launcher: cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("process launcher: {0}")]
    Process(String),
    #[error("ecs launcher: {operation} on cluster `{cluster}` failed: {message}")]
    Ecs {
        operation: &'static str,
        cluster: String,
        message: String,
    },
    #[error("kubernetes launcher: {action} {workload} `{namespace}/{name}`: {message}")]
    Kubernetes {
        action: &'static str,
        workload: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("kubernetes launcher: cannot reach the API server: {0}")]
    KubernetesClient(String),
}

/// Keeps a fleet of workers at a desired size.
#[async_trait::async_trait]
pub trait Launcher: Send + Sync {
    /// Starts missing workers, stops surplus ones and restarts dead ones so that `desired`
    /// workers run; returns what it found and did.
    async fn reconcile(&self, desired: u32) -> Result<LauncherStatus, LauncherError>;
    /// Called once when the scheduler stops: the process launcher stops its children (SIGTERM,
    /// then a kill after the grace period); the others leave their workers running.
    async fn shutdown(&self);
    /// `process`, `ecs`, `kubernetes` or `external`.
    fn kind(&self) -> &'static str;
}

/// `ceil(shards / shards_per_worker)` clamped to `min..=max` (`min` wins if `min > max`).
pub fn desired_workers(shards: usize, shards_per_worker: u32, min: u32, max: u32) -> u32 {
    let per = u64::from(shards_per_worker.max(1));
    let need = (shards as u64).div_ceil(per);
    let need = u32::try_from(need).unwrap_or(u32::MAX);
    need.min(max).max(min)
}

/// The launcher `[scheduler.launcher]` describes.
pub async fn build(config: &Config) -> Result<Box<dyn Launcher>, LauncherError> {
    let l = &config.scheduler.launcher;
    Ok(match l.kind {
        LauncherKind::Process => Box::new(process::ProcessLauncher::new(
            process::ProcessSettings::from_config(config)?,
        )),
        LauncherKind::Ecs => Box::new(ecs::EcsLauncher::new(&l.ecs).await),
        LauncherKind::Kubernetes => {
            Box::new(kubernetes::KubernetesLauncher::new(&l.kubernetes).await?)
        }
        LauncherKind::External => Box::new(external::ExternalLauncher),
    })
}

/// Publishes a round's result as `twinbridge_launcher_workers{kind,state}`.
pub fn record(kind: &'static str, status: &LauncherStatus) {
    for (state, n) in [
        ("running", status.running),
        ("starting", status.starting),
        ("stopped", status.stopped),
    ] {
        metrics::gauge!("twinbridge_launcher_workers", "kind" => kind, "state" => state)
            .set(f64::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::desired_workers;

    #[test]
    fn desired_is_the_ceiling_of_shards_per_worker() {
        assert_eq!(desired_workers(16, 8, 1, 64), 2);
        assert_eq!(desired_workers(17, 8, 1, 64), 3);
        assert_eq!(desired_workers(1, 8, 1, 64), 1);
    }

    #[test]
    fn desired_is_clamped_to_min_and_max() {
        assert_eq!(desired_workers(0, 8, 1, 64), 1, "no shards: min_workers");
        assert_eq!(desired_workers(0, 8, 0, 64), 0);
        assert_eq!(desired_workers(3, 1, 5, 64), 5);
        assert_eq!(desired_workers(1000, 8, 1, 64), 64);
        assert_eq!(desired_workers(10, 1, 7, 3), 7, "min wins over max");
    }

    #[test]
    fn desired_survives_extremes() {
        assert_eq!(desired_workers(usize::MAX, 1, 1, u32::MAX), u32::MAX);
        assert_eq!(
            desired_workers(5, 0, 0, 64),
            5,
            "zero shards_per_worker counts as one"
        );
    }
}
