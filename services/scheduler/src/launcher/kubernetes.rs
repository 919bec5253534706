//! The `kubernetes` launcher: workers are the replicas of a StatefulSet or Deployment. A round
//! reads its `scale` subresource and, only when `spec.replicas` differs from the desired count,
//! sends a JSON merge patch `{"spec":{"replicas":N}}` to it. Kubernetes itself restarts dead pods.
//!
//! The scheduler's service account needs `get` and `patch` on `statefulsets/scale` (or
//! `deployments/scale`) in the workload's namespace.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use twinbridge_config::{KubernetesLauncherConfig, WorkloadKind};

use super::{Launcher, LauncherError, LauncherStatus};

/// Scales a worker workload.
pub struct KubernetesLauncher {
    client: Client,
    namespace: String,
    name: String,
    workload: WorkloadKind,
}

impl KubernetesLauncher {
    /// Builds the client: `api_url` without credentials when set (tests), else the in-cluster
    /// service account or a kubeconfig (as `kubectl` finds it).
    pub async fn new(config: &KubernetesLauncherConfig) -> Result<Self, LauncherError> {
        let mut kc = match &config.api_url {
            Some(url) => kube::Config::new(url.parse().map_err(|e| {
                LauncherError::KubernetesClient(format!(
                    "scheduler.launcher.kubernetes.api_url `{url}`: {e}"
                ))
            })?),
            None => kube::Config::infer()
                .await
                .map_err(|e| LauncherError::KubernetesClient(e.to_string()))?,
        };
        kc.connect_timeout = Some(config.timeout);
        kc.read_timeout = Some(config.timeout);
        kc.write_timeout = Some(config.timeout);
        let client =
            Client::try_from(kc).map_err(|e| LauncherError::KubernetesClient(e.to_string()))?;
        Ok(KubernetesLauncher {
            client,
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            workload: config.workload,
        })
    }

    fn workload(&self) -> &'static str {
        match self.workload {
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Deployment => "Deployment",
        }
    }

    fn resource(&self) -> &'static str {
        match self.workload {
            WorkloadKind::StatefulSet => "statefulsets/scale",
            WorkloadKind::Deployment => "deployments/scale",
        }
    }

    fn error(&self, action: &'static str, e: kube::Error) -> LauncherError {
        let message = match &e {
            kube::Error::Api(r) if r.code == 403 => format!(
                "forbidden (403: {}); the scheduler's service account needs `get` and `patch` \
                 on `{}` in namespace `{}`",
                r.message,
                self.resource(),
                self.namespace
            ),
            kube::Error::Api(r) if r.code == 404 => {
                format!("not found (404: {})", r.message)
            }
            kube::Error::Api(r) => format!("{} ({}): {}", r.reason, r.code, r.message),
            other => other.to_string(),
        };
        LauncherError::Kubernetes {
            action,
            workload: self.workload(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            message,
        }
    }

    async fn get_scale(&self) -> Result<Scale, kube::Error> {
        match self.workload {
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .get_scale(&self.name)
                    .await
            }
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .get_scale(&self.name)
                    .await
            }
        }
    }

    async fn patch_scale(&self, replicas: u32) -> Result<Scale, kube::Error> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams::default();
        match self.workload {
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(&self.name, &params, &patch)
                    .await
            }
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(&self.name, &params, &patch)
                    .await
            }
        }
    }
}

#[async_trait::async_trait]
impl Launcher for KubernetesLauncher {
    async fn reconcile(&self, desired: u32) -> Result<LauncherStatus, LauncherError> {
        let scale = self
            .get_scale()
            .await
            .map_err(|e| self.error("reading the scale of", e))?;
        let spec = scale
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let current = scale
            .status
            .as_ref()
            .and_then(|s| u32::try_from(s.replicas).ok())
            .unwrap_or(0);
        if spec != desired {
            self.patch_scale(desired)
                .await
                .map_err(|e| self.error("scaling", e))?;
            tracing::info!(
                workload = self.workload(),
                namespace = %self.namespace,
                name = %self.name,
                from = spec,
                to = desired,
                "worker workload scaled"
            );
        }
        Ok(LauncherStatus {
            desired,
            running: current.min(desired),
            starting: desired.saturating_sub(current),
            stopped: current.saturating_sub(desired),
        })
    }

    async fn shutdown(&self) {}

    fn kind(&self) -> &'static str {
        "kubernetes"
    }
}
