//! `twinbridge`: one binary for every service. Parses the command line, loads and validates the
//! configuration before anything binds or connects, then runs the chosen service(s) until
//! SIGTERM/SIGINT and drains within a grace period.
#![forbid(unsafe_code)]

mod admin_cli;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, ConfigError, Loader, LogFormat, StoreBackend};
use twinbridge_store::memory::MemoryStore;
use twinbridge_store::redis_store::RedisStoreOptions;
use twinbridge_store::StoreOptions;
use twinbridge_telemetry::traces::{TracePipeline, TraceSettings, Traces, TracesError};
use twinbridge_telemetry::{cancel_on_signals, init_logging, install_metrics, LogStyle};

/// Exit status for an invalid configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// How long services get to finish in-flight work after a stop signal.
const GRACE: Duration = Duration::from_secs(10);

/// mimalloc instead of glibc's allocator: the message path allocates per message (payloads,
/// envelopes, request bodies), and glibc malloc/free took about 40 % of a busy worker's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "twinbridge",
    version,
    about = "AWS IoT device fleets into ThingWorx, at scale"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct GlobalArgs {
    /// The TOML configuration file.
    #[arg(long, short = 'c', global = true, env = "TWINBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Use this Redis (sets store.backend = "redis" and store.urls = [URL]).
    #[arg(long, global = true, value_name = "URL")]
    redis: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Log filter, e.g. `info` or `debug,hyper=info` (overrides log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Discovers Things, assigns shards, keeps workers running, serves the admin API.
    Scheduler(ListenArg),
    /// Ingests device messages and routes them to shard streams.
    Router(ListenArg),
    /// Delivers shard streams to ThingWorx and AWS IoT shadows.
    Worker(ListenArg),
    /// Runs scheduler, router and worker in one process.
    All,
    /// Runs a self-contained demo fleet (no Redis, AWS or ThingWorx needed).
    Demo(demo::DemoArgs),
    /// The ThingWorx platform simulator, for tests, demos and load tests.
    PlatformSim(twinbridge_platform_sim::SimOptions),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A client of the scheduler's admin API: fleet, shards, workers, Things, moves, DLQ…
    Admin(admin_cli::AdminArgs),
}

#[derive(Args, Debug)]
struct ListenArg {
    /// Address for this service's HTTP endpoints (overrides <service>.listen).
    #[arg(long)]
    listen: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validates the configuration (file, environment, flags) without starting anything.
    Check {
        /// Also print the effective configuration, secrets redacted.
        #[arg(long)]
        print: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen_override = match &cli.command {
        Command::Scheduler(l) => l.listen.clone().map(|a| ("scheduler.listen", a)),
        Command::Router(l) => l.listen.clone().map(|a| ("router.listen", a)),
        Command::Worker(l) => l.listen.clone().map(|a| ("worker.listen", a)),
        _ => None,
    };
    if let Command::Admin(args) = cli.command {
        // A client: it needs no configuration (and TWINBRIDGE_ADMIN_* are not config keys).
        return admin_cli::main(args);
    }
    if let Command::PlatformSim(opts) = cli.command {
        init_logging(log_style(cli.global.log_format, None), "info");
        return run_async(async move {
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            twinbridge_platform_sim::run(opts, shutdown)
                .await
                .map_err(anyhow::Error::from)
        });
    }

    let config = match load_config(&cli.global, listen_override) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("twinbridge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    match cli.command {
        Command::Config(ConfigCommand::Check { print }) => {
            println!("configuration OK");
            if print {
                print!("{}", config.to_redacted_toml());
            }
            ExitCode::SUCCESS
        }
        Command::Demo(args) => {
            init_logging(
                log_style(cli.global.log_format, Some(config.log.format)),
                cli.global.log_level.as_deref().unwrap_or("warn"),
            );
            install_metrics();
            let store = store_options(&config);
            run_async(demo::run(args, config, store))
        }
        command => {
            init_logging(
                log_style(cli.global.log_format, Some(config.log.format)),
                cli.global.log_level.as_deref().unwrap_or(&config.log.level),
            );
            let traces = match trace_pipeline(&command) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("twinbridge: traces: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            install_metrics();
            run_async(run_services(command, config, traces))
        }
    }
}

fn log_style(flag: Option<LogFormatArg>, config: Option<LogFormat>) -> LogStyle {
    match (flag, config) {
        (Some(LogFormatArg::Json), _) | (None, Some(LogFormat::Json)) => LogStyle::Json,
        _ => LogStyle::Text,
    }
}

fn load_config(
    global: &GlobalArgs,
    listen: Option<(&'static str, String)>,
) -> Result<Config, ConfigError> {
    let mut loader = Loader::new();
    if let Some(path) = &global.config {
        loader = loader.file(path);
    }
    loader = loader.process_env();
    if let Some(url) = &global.redis {
        loader = loader
            .set("store.backend", "redis")
            .set("store.urls", format!("[\"{}\"]", url.replace('"', "")));
    }
    if let Some((key, addr)) = listen {
        loader = loader.set(key, addr);
    }
    loader.load()
}

/// The OTLP trace export the `OTEL_*` variables ask for (`None`: traces off), checked before
/// anything binds. The service is named `twinbridge-<command>` unless `OTEL_SERVICE_NAME` says.
fn trace_pipeline(command: &Command) -> Result<Option<TracePipeline>, TracesError> {
    let service = match command {
        Command::Scheduler(_) => "twinbridge-scheduler",
        Command::Router(_) => "twinbridge-router",
        Command::Worker(_) => "twinbridge-worker",
        _ => "twinbridge-all",
    };
    let settings = TraceSettings::from_env()?;
    match &settings {
        TraceSettings::Off(why) => tracing::debug!(why, "traces off"),
        TraceSettings::Otlp { endpoint_var } => {
            tracing::info!(endpoint_var, "traces exported over OTLP/HTTP")
        }
    }
    TracePipeline::new(&settings, service)
}

fn store_options(config: &Config) -> StoreOptions {
    match config.store.backend {
        StoreBackend::Memory => StoreOptions::Memory(MemoryStore::new()),
        StoreBackend::Redis => StoreOptions::Redis(RedisStoreOptions {
            urls: config.store.urls.clone(),
            cluster: config.store.cluster,
            prefix: config.store.prefix.clone(),
            password: config
                .store
                .password
                .as_ref()
                .map(|s| s.expose().to_string()),
            connect_timeout: config.store.connect_timeout,
            response_timeout: config.store.response_timeout,
            ..RedisStoreOptions::default()
        }),
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twinbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_services(
    command: Command,
    mut config: Config,
    traces: Option<TracePipeline>,
) -> anyhow::Result<()> {
    let traces = traces.map_or_else(Traces::off, TracePipeline::install);
    if matches!(command, Command::All)
        && config.scheduler.launcher.kind == twinbridge_config::LauncherKind::Process
    {
        // The worker runs in this process; the process launcher would start more beside it.
        tracing::info!("`twinbridge all` runs its own worker: no worker processes are launched");
        config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    }
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let store = store_options(&config);
    let separate_process = !matches!(command, Command::All);
    if separate_process && config.store.backend == StoreBackend::Memory {
        tracing::warn!(
            "store.backend = \"memory\" is private to this process: other twinbridge processes cannot \
             see it; use a Redis store (--redis URL) for a fleet of processes"
        );
    }

    let mut tasks = tokio::task::JoinSet::new();
    let services: Vec<&str> = match command {
        Command::Scheduler(_) => vec!["scheduler"],
        Command::Router(_) => vec!["router"],
        Command::Worker(_) => vec!["worker"],
        _ => vec!["scheduler", "router", "worker"],
    };
    for name in services {
        let (config, store, shutdown) = (config.clone(), store.clone(), shutdown.clone());
        match name {
            "scheduler" => tasks.spawn(async move {
                twinbridge_scheduler::run(config, store, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }),
            "router" => tasks.spawn(async move {
                twinbridge_router::run(config, store, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }),
            _ => tasks.spawn(async move {
                twinbridge_worker::run(config, store, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }),
        };
    }

    // The first service to fail stops the others; a stop signal gives all of them GRACE to drain.
    let mut result = Ok(());
    loop {
        let next = tokio::select! {
            next = tasks.join_next() => next,
            _ = shutdown.cancelled() => break,
        };
        match next {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                result = Err(e);
                shutdown.cancel();
                break;
            }
            Some(Err(join)) => {
                result = Err(anyhow::anyhow!("service task failed: {join}"));
                shutdown.cancel();
                break;
            }
        }
    }
    let drained = tokio::time::timeout(GRACE, async {
        while let Some(next) = tasks.join_next().await {
            if let Ok(Err(e)) = next {
                tracing::error!(error = %e, "service stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = GRACE.as_secs(),
            "services did not stop within the grace period"
        );
    }
    // After the services: the spans of their last batches are ended, and exported here.
    traces.shutdown().await;
    result
}
