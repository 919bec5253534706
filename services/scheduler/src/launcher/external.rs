//! The `external` launcher: workers are run by something else (a supervisor, an autoscaler, an
//! operator); a round only reports the desired size.

use super::{Launcher, LauncherError, LauncherStatus};

/// Launches nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExternalLauncher;

#[async_trait::async_trait]
impl Launcher for ExternalLauncher {
    async fn reconcile(&self, desired: u32) -> Result<LauncherStatus, LauncherError> {
        tracing::debug!(desired, "external launcher: nothing to launch");
        Ok(LauncherStatus {
            desired,
            ..LauncherStatus::default()
        })
    }

    async fn shutdown(&self) {}

    fn kind(&self) -> &'static str {
        "external"
    }
}
