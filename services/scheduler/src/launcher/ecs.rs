//! The `ecs` launcher: workers are ECS tasks started with `RunTask` (Fargate by default, `awsvpc`
//! networking, environment overrides on the worker container, tags) and
//! `startedBy = "twinbridge-scheduler"`. A round lists the tasks it started (`ListTasks` by
//! `startedBy`, then `DescribeTasks`, keeping the configured task definition family), counts the
//! live ones (desired status `RUNNING`; last status `PROVISIONING`/`PENDING`/`ACTIVATING` =
//! starting, `RUNNING` = running), starts the missing ones and stops the surplus, newest first.
//! Dead tasks simply drop out of the count and are replaced.

use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, KeyValuePair, LaunchType,
    NetworkConfiguration, Tag, Task, TaskOverride,
};
use twinbridge_aws::{sdk_config, AwsAccess};
use twinbridge_config::EcsLauncherConfig;

use super::{Launcher, LauncherError, LauncherStatus};

/// The `startedBy` of every task this launcher starts; `ListTasks` filters on it.
pub const STARTED_BY: &str = "twinbridge-scheduler";

/// Most tasks one `RunTask` call may start; most tasks one `DescribeTasks` call may describe.
const RUN_TASK_MAX: u32 = 10;
const DESCRIBE_MAX: usize = 100;

/// Runs workers as ECS tasks.
pub struct EcsLauncher {
    client: aws_sdk_ecs::Client,
    config: EcsLauncherConfig,
    family: String,
}

/// The task definition family of `family`, `family:revision` or a task definition ARN.
pub fn family_of(task_definition: &str) -> &str {
    let name = task_definition
        .rsplit_once('/')
        .map_or(task_definition, |(_, n)| n);
    name.split(':').next().unwrap_or(name)
}

fn sdk_message<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(e).to_string(),
    }
}

impl EcsLauncher {
    /// Builds the client (no network call yet).
    pub async fn new(config: &EcsLauncherConfig) -> Self {
        let shared = sdk_config(&AwsAccess {
            region: config.region.clone(),
            endpoint: config.endpoint_url.clone(),
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config
                .secret_access_key
                .as_ref()
                .map(|s| s.expose().to_string()),
            timeout: config.timeout,
        })
        .await;
        EcsLauncher {
            client: aws_sdk_ecs::Client::new(&shared),
            family: family_of(&config.task_definition).to_string(),
            config: config.clone(),
        }
    }

    fn error(&self, operation: &'static str, message: String) -> LauncherError {
        LauncherError::Ecs {
            operation,
            cluster: self.config.cluster.clone(),
            message,
        }
    }

    /// The live tasks this launcher started, oldest first.
    pub async fn live_tasks(&self) -> Result<Vec<Task>, LauncherError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .list_tasks()
                .cluster(&self.config.cluster)
                .started_by(STARTED_BY)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| self.error("ListTasks", sdk_message(&e)))?;
            arns.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        let mut tasks = Vec::new();
        for chunk in arns.chunks(DESCRIBE_MAX) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.config.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| self.error("DescribeTasks", sdk_message(&e)))?;
            tasks.extend(out.tasks().iter().cloned());
        }
        tasks.retain(|t| {
            t.desired_status() == Some("RUNNING")
                && t.last_status() != Some("STOPPED")
                && t.last_status() != Some("DEPROVISIONING")
                && t.last_status() != Some("STOPPING")
                && t.task_definition_arn().map(family_of) == Some(self.family.as_str())
        });
        tasks.sort_by_key(|t| t.created_at().map(|d| (d.secs(), d.subsec_nanos())));
        Ok(tasks)
    }

    async fn run(&self, count: u32) -> Result<(), LauncherError> {
        let c = &self.config;
        let mut request = self
            .client
            .run_task()
            .cluster(&c.cluster)
            .task_definition(&c.task_definition)
            .count(count as i32)
            .launch_type(LaunchType::from(c.launch_type.as_str()))
            .started_by(STARTED_BY)
            .overrides(
                TaskOverride::builder()
                    .container_overrides(
                        ContainerOverride::builder()
                            .name(&c.container_name)
                            .set_environment(Some(
                                c.environment
                                    .iter()
                                    .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
                                    .collect(),
                            ))
                            .build(),
                    )
                    .build(),
            );
        if !c.tags.is_empty() {
            request = request.set_tags(Some(
                c.tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ));
        }
        if !c.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(c.subnets.clone()))
                .set_security_groups(Some(c.security_groups.clone()))
                .assign_public_ip(if c.assign_public_ip {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                })
                .build()
                .map_err(|e| self.error("RunTask", e.to_string()))?;
            request = request.network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.error("RunTask", sdk_message(&e)))?;
        for t in out.tasks() {
            tracing::info!(
                task = t.task_arn().unwrap_or_default(),
                cluster = %c.cluster,
                "worker task started"
            );
        }
        if !out.failures().is_empty() {
            let reasons: Vec<String> = out
                .failures()
                .iter()
                .map(|f| {
                    format!(
                        "{} ({})",
                        f.reason().unwrap_or("unknown reason"),
                        f.detail().or(f.arn()).unwrap_or("-")
                    )
                })
                .collect();
            return Err(self.error("RunTask", reasons.join("; ")));
        }
        Ok(())
    }

    async fn stop(&self, arn: &str, desired: u32) -> Result<(), LauncherError> {
        self.client
            .stop_task()
            .cluster(&self.config.cluster)
            .task(arn)
            .reason(format!(
                "twinbridge scheduler: surplus worker (desired {desired})"
            ))
            .send()
            .await
            .map_err(|e| self.error("StopTask", sdk_message(&e)))?;
        tracing::info!(task = arn, cluster = %self.config.cluster, desired, "worker task stopped");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Launcher for EcsLauncher {
    async fn reconcile(&self, desired: u32) -> Result<LauncherStatus, LauncherError> {
        let live = self.live_tasks().await?;
        let mut status = LauncherStatus {
            desired,
            ..LauncherStatus::default()
        };
        let alive = u32::try_from(live.len()).unwrap_or(u32::MAX);
        if alive > desired {
            // Newest first.
            for t in live.iter().rev().take((alive - desired) as usize) {
                if let Some(arn) = t.task_arn() {
                    self.stop(arn, desired).await?;
                    status.stopped += 1;
                }
            }
        }
        for t in live.iter().take(desired as usize) {
            if t.last_status() == Some("RUNNING") {
                status.running += 1;
            } else {
                status.starting += 1;
            }
        }
        let mut missing = desired.saturating_sub(alive);
        while missing > 0 {
            let n = missing.min(RUN_TASK_MAX);
            self.run(n).await?;
            status.starting += n;
            missing -= n;
        }
        Ok(status)
    }

    async fn shutdown(&self) {}

    fn kind(&self) -> &'static str {
        "ecs"
    }
}

#[cfg(test)]
mod tests {
    use super::family_of;

    #[test]
    fn family_of_every_task_definition_form() {
        assert_eq!(family_of("tb-worker"), "tb-worker");
        assert_eq!(family_of("tb-worker:7"), "tb-worker");
        assert_eq!(
            family_of("arn:aws:ecs:us-east-1:123456789012:task-definition/tb-worker:7"),
            "tb-worker"
        );
    }
}
