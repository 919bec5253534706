//! Loading: TOML file, then `TWINBRIDGE_…` environment variables, then command-line overrides,
//! then validation of the merged result.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Format, Toml};
use figment::Figment;

use crate::model::Config;
use crate::validate::{validate, Problem};

/// Prefix of environment overrides. `TWINBRIDGE_STORE__BACKEND=redis` sets `store.backend`:
/// `__` separates levels, the rest is lower-cased.
pub const ENV_PREFIX: &str = "TWINBRIDGE_";

/// `TWINBRIDGE_…` variables of the command line (the config file path, the admin client's server
/// and token), not configuration keys: overrides skip them.
pub const COMMAND_LINE_VARS: &[&str] = &[
    "TWINBRIDGE_CONFIG",
    "TWINBRIDGE_ADMIN_URL",
    "TWINBRIDGE_ADMIN_TOKEN",
];

/// The configuration could not be loaded. Every problem names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration:\n{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems, one per offending key.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::File { path, reason } => vec![Problem {
                key: "(file)".into(),
                message: format!("{}: {reason}", path.display()),
            }],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {}: {}", p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds a [`Config`] from its sources.
#[derive(Debug, Default, Clone)]
pub struct Loader {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    overrides: Vec<(String, String)>,
}

impl Loader {
    pub fn new() -> Self {
        Loader::default()
    }

    /// Reads this TOML file (it must exist).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Takes overrides from the process environment (`TWINBRIDGE_…`).
    pub fn process_env(self) -> Self {
        #[allow(clippy::disallowed_methods)]
        // this crate is the one place that reads the environment
        let vars: Vec<(String, String)> = std::env::vars().collect();
        self.env(vars)
    }

    /// Takes overrides from these variables (only `TWINBRIDGE_…` ones are used).
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(
            vars.into_iter()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
                .filter(|(k, _)| !COMMAND_LINE_VARS.contains(&k.as_str())),
        );
        self
    }

    /// Sets one key (dotted path, e.g. `store.backend`) from a command-line flag. The value is
    /// parsed like an environment value: `true`, `42`, `[a, b]`, else a string.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// Merges the sources and validates the result, reporting every problem at once.
    pub fn load(self) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = &self.file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        for (k, v) in &self.env {
            let key = k[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            figment = figment.merge((key, parse_value(v)));
        }
        for (k, v) in &self.overrides {
            figment = figment.merge((k.clone(), parse_value(v)));
        }
        let mut config: Config = figment.extract().map_err(|e| {
            ConfigError::Invalid(e.into_iter().map(Problem::from_figment).collect())
        })?;
        config.source_file = self.file.clone();
        let problems = validate(&mut config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: "not a regular file".into(),
                })
            }
        })
}

fn parse_value(raw: &str) -> figment::value::Value {
    // figment parses bools, numbers and `[a, b]` arrays; anything else stays a string.
    figment::value::Value::from_str(raw)
        .unwrap_or_else(|_| figment::value::Value::from(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogFormat, StoreBackend};
    use std::io::Write;
    use std::time::Duration;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn keys(e: &ConfigError) -> Vec<String> {
        e.problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Loader::new().load().unwrap();
        assert_eq!(c.store.backend, StoreBackend::Memory);
        assert_eq!(c.scheduler.shard_capacity, 1000);
    }

    #[test]
    fn command_line_variables_are_not_config_keys() {
        let c = Loader::new()
            .env(
                COMMAND_LINE_VARS
                    .iter()
                    .map(|k| (k.to_string(), "x".to_string())),
            )
            .load();
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn file_env_and_flags_merge_in_order() {
        let f = file(
            r#"
            [store]
            backend = "redis"
            urls = ["redis://10.0.0.1:6379"]
            [scheduler]
            shard_capacity = 500
            discovery_interval = "2m"
            [log]
            format = "json"
            "#,
        );
        let c = Loader::new()
            .file(f.path())
            .env([
                (
                    "TWINBRIDGE_SCHEDULER__SHARD_CAPACITY".to_string(),
                    "700".to_string(),
                ),
                ("TWINBRIDGE_STORE__CLUSTER".to_string(), "true".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ])
            .set("store.prefix", "fleet-a")
            .load()
            .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Redis);
        assert_eq!(c.store.urls, vec!["redis://10.0.0.1:6379".to_string()]);
        assert!(c.store.cluster);
        assert_eq!(c.store.prefix, "fleet-a");
        assert_eq!(c.scheduler.shard_capacity, 700);
        assert_eq!(c.scheduler.discovery_interval, Duration::from_secs(120));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_is_named() {
        let f = file("[store]\nbakend = \"redis\"\n");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert_eq!(keys(&e), vec!["store.bakend".to_string()]);
        assert!(e.to_string().contains("unknown"), "{e}");
    }

    #[test]
    fn unknown_section_is_named() {
        let f = file("[stor]\nbackend = \"redis\"\n");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert_eq!(keys(&e), vec!["stor".to_string()]);
    }

    #[test]
    fn wrong_type_is_named() {
        let f = file("[scheduler]\nshard_capacity = \"many\"\n");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert_eq!(keys(&e), vec!["scheduler.shard_capacity".to_string()]);
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = Loader::new()
            .env([(
                "TWINBRIDGE_WORKER__LEASE_TTL".to_string(),
                "soon".to_string(),
            )])
            .load()
            .unwrap_err();
        assert_eq!(keys(&e), vec!["worker.lease_ttl".to_string()]);
    }

    #[test]
    fn invalid_toml_is_reported() {
        let f = file("[store\nbackend=");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert!(!e.problems().is_empty());
    }

    #[test]
    fn missing_file_is_reported() {
        let e = Loader::new()
            .file("/nonexistent/twinbridge.toml")
            .load()
            .unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }), "{e}");
    }

    #[test]
    fn every_validation_problem_is_reported_at_once() {
        let f = file(
            r#"
            [store]
            backend = "redis"
            urls = ["http://not-redis"]
            prefix = ""
            [scheduler]
            shard_capacity = 0
            [router]
            max_payload_bytes = 0
            [worker]
            lease_ttl = "1s"
            heartbeat_interval = "1s"
            "#,
        );
        let e = Loader::new().file(f.path()).load().unwrap_err();
        let mut k = keys(&e);
        k.sort();
        assert_eq!(
            k,
            vec![
                "router.max_payload_bytes",
                "scheduler.shard_capacity",
                "store.prefix",
                "store.urls[0]",
                "worker.heartbeat_interval",
            ]
        );
    }

    #[test]
    fn secrets_from_files_and_never_printed() {
        let key = file("s3cr3t-app-key\n");
        let c = Loader::new()
            .env([(
                "TWINBRIDGE_PLATFORM__APP_KEY_FILE".to_string(),
                key.path().display().to_string(),
            )])
            .env([(
                "TWINBRIDGE_STORE__PASSWORD".to_string(),
                "redis-pw".to_string(),
            )])
            .load()
            .unwrap();
        assert_eq!(
            c.platform.app_key.as_ref().unwrap().expose(),
            "s3cr3t-app-key"
        );
        assert_eq!(c.store.password.as_ref().unwrap().expose(), "redis-pw");
        let printed = format!("{c:?}\n{}", c.to_redacted_toml());
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(!printed.contains("redis-pw"), "{printed}");
    }

    #[test]
    fn secret_and_secret_file_together_is_a_problem() {
        let key = file("a");
        let e = Loader::new()
            .set("platform.app_key", "b")
            .set("platform.app_key_file", key.path().display().to_string())
            .load()
            .unwrap_err();
        assert_eq!(keys(&e), vec!["platform.app_key_file".to_string()]);
    }

    #[test]
    fn kinesis_source_problems_are_named() {
        let e = Loader::new()
            .set("router.kinesis.enabled", "true")
            .set("router.kinesis.max_records", "20000")
            .set("router.kinesis.start", "at-timestamp")
            .set("router.kinesis.access_key_id", "AKIA")
            .load()
            .unwrap_err();
        let mut got = keys(&e);
        got.sort();
        assert_eq!(
            got,
            vec![
                "router.kinesis.access_key_id".to_string(),
                "router.kinesis.max_records".to_string(),
                "router.kinesis.start_timestamp".to_string(),
                "router.kinesis.stream".to_string(),
            ]
        );
        let e = Loader::new()
            .set("router.kinesis.enabled", "true")
            .set("router.kinesis.stream", "iot")
            .set("router.kinesis.start_timestamp", "yesterday")
            .load()
            .unwrap_err();
        assert_eq!(keys(&e), vec!["router.kinesis.start_timestamp".to_string()]);
        let c = Loader::new()
            .set("router.kinesis.enabled", "true")
            .set("router.kinesis.stream", "iot")
            .set("router.kinesis.start", "latest")
            .load()
            .unwrap();
        assert_eq!(c.router.kinesis.start, crate::KinesisStart::Latest);
    }

    #[test]
    fn unreadable_secret_file_is_named() {
        let e = Loader::new()
            .set("store.password_file", "/nonexistent/pw")
            .load()
            .unwrap_err();
        assert_eq!(keys(&e), vec!["store.password_file".to_string()]);
    }

    #[test]
    fn worker_delivery_templates_and_downlink_problems_are_named() {
        let f = file(
            r#"
[worker]
batch_size = 0
retry_initial = "2s"
retry_max = "1s"

[worker.shadow]
access_key_id = "AKIA"

[worker.downlink]
cert_file = "/nonexistent/cert.pem"

[[worker.templates]]
template = ""
properties = { temp = "decoded/t" }
downlink_topic = "a/+/b"

[router]
thing_pointer = "device/id"
"#,
        );
        let e = Loader::new().file(f.path()).load().unwrap_err();
        let got = keys(&e);
        for want in [
            "worker.batch_size",
            "worker.retry_max",
            "worker.shadow.access_key_id",
            "worker.downlink.cert_file",
            "worker.downlink.ca_file",
            "worker.templates[0].template",
            "worker.templates[0].properties.temp",
            "worker.templates[0].downlink_topic",
            "router.thing_pointer",
        ] {
            assert!(got.iter().any(|k| k == want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn launcher_defaults_and_file_source() {
        let f = file("[scheduler.launcher]\nkind = \"external\"\n");
        let c = Loader::new().file(f.path()).load().unwrap();
        let l = &c.scheduler.launcher;
        assert_eq!(l.kind, crate::model::LauncherKind::External);
        assert_eq!((l.min_workers, l.max_workers), (1, 64));
        assert_eq!(l.interval, Duration::from_secs(5));
        assert_eq!(l.process.args, vec!["worker".to_string()]);
        assert_eq!(l.ecs.launch_type, "FARGATE");
        assert_eq!(c.source_file.as_deref(), Some(f.path()));
        let c = Loader::new().load().unwrap();
        assert_eq!(
            c.scheduler.launcher.kind,
            crate::model::LauncherKind::Process
        );
        assert_eq!(c.source_file, None);
    }

    #[test]
    fn launcher_problems_are_named() {
        let f = file(
            r#"
            [scheduler.launcher]
            kind = "ecs"
            min_workers = 5
            max_workers = 2
            [scheduler.launcher.ecs]
            task_definition = "tb-worker"
            access_key_id = "AKIA"
            "#,
        );
        let e = Loader::new().file(f.path()).load().unwrap_err();
        let k = keys(&e);
        for want in [
            "scheduler.launcher.min_workers",
            "scheduler.launcher.ecs.cluster",
            "scheduler.launcher.ecs.container_name",
            "scheduler.launcher.ecs.subnets",
            "scheduler.launcher.ecs.access_key_id",
        ] {
            assert!(k.contains(&want.to_string()), "{want} missing in {k:?}");
        }
        assert!(!k.contains(&"scheduler.launcher.ecs.task_definition".to_string()));

        let f = file("[scheduler.launcher]\nkind = \"kubernetes\"\n[scheduler.launcher.kubernetes]\nworkload = \"Deployment\"\n");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert_eq!(
            keys(&e),
            vec!["scheduler.launcher.kubernetes.name".to_string()]
        );

        let f = file("[scheduler.launcher]\nkind = \"docker\"\n");
        let e = Loader::new().file(f.path()).load().unwrap_err();
        assert_eq!(keys(&e), vec!["scheduler.launcher.kind".to_string()]);
    }
}
