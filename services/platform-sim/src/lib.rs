//! An in-memory ThingWorx stand-in for tests, the demo and load tests: the REST shapes the
//! client uses under `/Thingworx`, plus a test API under `/_sim` (see `docs/platform.md`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod faults;
pub mod protocol;
pub mod state;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use twinbridge_platform::AppKey;

pub use faults::Faults;
pub use state::{
    Current, Generate, PropertySeed, Seed, SimSettings, Simulator, StatsSnapshot, TemplateSeed,
    ThingSeed, WriteError, WriteRecord, GENERIC_THING, SIM_TEMPLATE,
};
pub use webhook::{WebhookEvent, WebhookTarget};

/// Command-line options of `twinbridge platform-sim`.
#[derive(clap::Args, Clone, Debug)]
pub struct SimOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: SocketAddr,
    /// The appKey clients must send.
    #[arg(long, default_value = "twinbridge-sim-key")]
    pub app_key: String,
    /// A JSON seed file (templates, Things, tags, property definitions, initial values).
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// Generate this many Things at start-up.
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    /// The template of generated Things.
    #[arg(long, default_value = SIM_TEMPLATE)]
    pub generate_template: String,
    /// Name prefix of generated Things.
    #[arg(long, default_value = "sim-thing-")]
    pub generate_prefix: String,
    /// Where user edits (`POST /_sim/things/{t}/properties/{p}`) are posted.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` with each webhook.
    #[arg(long)]
    pub webhook_token: Option<AppKey>,
    /// Webhook deliveries attempted per edit before giving up.
    #[arg(long, default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Edits waiting for webhook delivery; more are dropped and counted.
    #[arg(long, default_value_t = 10_000)]
    pub webhook_queue: usize,
    /// Writes kept per property (older ones are dropped and counted).
    #[arg(long, default_value_t = 10_000)]
    pub history_cap: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8099)),
            app_key: "twinbridge-sim-key".into(),
            seed: None,
            generate: 0,
            generate_template: SIM_TEMPLATE.into(),
            generate_prefix: "sim-thing-".into(),
            webhook_url: None,
            webhook_token: None,
            webhook_max_attempts: 8,
            webhook_queue: 10_000,
            history_cap: 10_000,
        }
    }
}

impl SimOptions {
    /// Options for tests: a free loopback port, everything else default.
    pub fn for_tests() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SimOptions::default()
        }
    }
}

/// Why the simulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("seed file {path}: {reason}")]
    Seed { path: PathBuf, reason: String },
    #[error("invalid options: {0}")]
    Invalid(String),
    #[error("serve: {0}")]
    Serve(std::io::Error),
}

/// The whole HTTP app: `/Thingworx/...` (platform API) and `/_sim/...` (test API).
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .nest("/Thingworx", protocol::routes(sim.clone()))
        .nest("/_sim", admin::routes(sim))
}

/// Builds the simulator state from the options (seed file, generated Things, webhook).
pub fn build(opts: &SimOptions) -> Result<Simulator, SimError> {
    if let Some(url) = &opts.webhook_url {
        reqwest::Url::parse(url)
            .map_err(|e| SimError::Invalid(format!("--webhook-url {url:?}: {e}")))?;
    }
    let sim = Simulator::new(SimSettings {
        app_key: opts.app_key.clone(),
        history_cap: opts.history_cap,
        webhook_queue: opts.webhook_queue,
        webhook_max_attempts: opts.webhook_max_attempts,
        webhook: opts.webhook_url.as_ref().map(|url| WebhookTarget {
            url: url.clone(),
            token: opts.webhook_token.clone(),
        }),
    });
    if let Some(path) = &opts.seed {
        let seed_err = |reason: String| SimError::Seed {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| seed_err(e.to_string()))?;
        let seed: Seed = serde_json::from_str(&text).map_err(|e| seed_err(e.to_string()))?;
        sim.seed(&seed).map_err(|e| seed_err(e.to_string()))?;
    }
    if opts.generate > 0 {
        let mut g = Generate::new(opts.generate, &opts.generate_template);
        g.prefix = opts.generate_prefix.clone();
        sim.generate(&g)
            .map_err(|e| SimError::Invalid(format!("--generate: {e}")))?;
    }
    Ok(sim)
}

/// A simulator serving on a loopback port; stops when dropped or on [`RunningSim::stop`].
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    pub sim: Simulator,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl RunningSim {
    /// The platform base URL, up to and including `/Thingworx`.
    pub fn url(&self) -> String {
        format!("http://{}/Thingworx", self.addr)
    }

    /// The root URL (for `/_sim/...`).
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app_key(&self) -> &str {
        self.sim.app_key()
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) -> Result<(), SimError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| SimError::Serve(std::io::Error::other(e)))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds, builds and serves in the background.
pub async fn spawn(opts: SimOptions) -> Result<RunningSim, SimError> {
    let sim = build(&opts)?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: opts.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    webhook::start(&sim, shutdown.clone());
    let app = router(sim.clone());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .map_err(SimError::Serve)
    });
    info!(%addr, things = sim.thing_count(), "platform simulator listening");
    Ok(RunningSim {
        addr,
        sim,
        shutdown,
        task: Some(task),
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn run(opts: SimOptions, shutdown: CancellationToken) -> Result<(), SimError> {
    let running = spawn(opts).await?;
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = running.shutdown.cancelled() => {}
    }
    info!("platform simulator stopping");
    running.stop().await
}
