//! `twinbridge admin …`: a command-line client of the scheduler's admin REST API. Readable tables
//! for people, `--json` for scripts (the server's answer, unchanged), and distinct exit codes:
//! 3 the scheduler cannot be reached, 4 the token was refused, 5 not found, 6 conflict, 1 any other
//! API error or an answer that cannot be read, 64 a bad `--server` URL.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Subcommand};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};
use twinbridge_core::time::now_ms;

/// Exit status: the scheduler did not answer (connection refused, DNS, timeout).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: `401`, the token is missing or wrong.
pub const EXIT_UNAUTHORIZED: u8 = 4;
/// Exit status: `404`, the Thing, shard, worker… does not exist.
pub const EXIT_NOT_FOUND: u8 = 5;
/// Exit status: `409`, the request conflicts with the fleet's state (same shard, shard full…).
pub const EXIT_CONFLICT: u8 = 6;
/// Exit status: any other API error, or an answer that is not the expected JSON.
pub const EXIT_OTHER: u8 = 1;
/// Exit status: a bad command line (an unusable `--server` URL).
pub const EXIT_USAGE: u8 = 64;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The scheduler's admin API (its `scheduler.listen` address).
    #[arg(
        long,
        global = true,
        env = "TWINBRIDGE_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    server: String,
    /// The admin bearer token (`scheduler.admin_token`).
    #[arg(
        long,
        global = true,
        env = "TWINBRIDGE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the server's JSON answer unchanged instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on an answer after this many seconds (moves and rebalances wait for
    /// `scheduler.move_grace`, syncs for the platform).
    #[arg(long, global = true, default_value_t = 300, value_name = "SECONDS")]
    timeout: u64,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Fleet summary: Things, shards, workers, backlog, dead letters, launcher.
    Fleet,
    /// Every shard: Things/capacity, owner, backlog, pending, oldest entry.
    Shards,
    /// Live workers: host, pid, shards, draining, last heartbeat.
    Workers,
    /// One Thing: shard, owner, template, properties, last activity.
    Thing {
        /// The Thing's name.
        name: String,
    },
    /// One Thing's delivery log: what became of its recent messages, newest first.
    Deliveries {
        /// The Thing's name.
        name: String,
        /// At most this many records (server default 50).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One shard: capacity, owner, stream backlog and its Things.
    Shard {
        /// The shard id (see `admin shards`).
        id: u32,
    },
    /// Ends a Thing's move at once when its old shard cannot hand it off (see docs/operations.md).
    Release {
        /// The Thing's name.
        name: String,
    },
    /// Moves a Thing to another shard, keeping its message order.
    Move {
        /// The Thing's name.
        name: String,
        /// The target shard.
        #[arg(long)]
        shard: u32,
    },
    /// Asks a worker to hand over all its shards (or, with --undo, to take shards again).
    Drain {
        /// The worker id (see `admin workers`).
        worker: String,
        /// Cancel the drain.
        #[arg(long)]
        undo: bool,
    },
    /// Shows the rebalance plan; --apply carries it out.
    Rebalance {
        /// Apply the plan (Thing moves and shard hand-offs).
        #[arg(long)]
        apply: bool,
    },
    /// Runs Thing discovery now and shows its report.
    Sync,
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Lists dead letters, oldest first.
    List {
        /// At most this many (the server caps it at 1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this letter id (the next page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Appends letters back to their Thing's current shard (all, or --ids).
    Replay {
        /// Only these letter ids.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        ids: Option<Vec<String>>,
        /// At most this many (server default 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Removes letters: the named ones, or --all.
    #[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
    Purge {
        /// These letter ids.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        ids: Option<Vec<String>>,
        /// Every letter.
        #[arg(long)]
        all: bool,
    },
}

/// Why a call failed; each kind has its own exit status.
#[derive(Debug)]
enum Failure {
    Unreachable {
        server: String,
        why: String,
    },
    Unauthorized,
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    BadAnswer(String),
    Usage(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Unreachable { .. } => EXIT_UNREACHABLE,
            Failure::Unauthorized => EXIT_UNAUTHORIZED,
            Failure::Api { status, .. } if *status == StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
            Failure::Api { status, .. } if *status == StatusCode::CONFLICT => EXIT_CONFLICT,
            Failure::Api { .. } | Failure::BadAnswer(_) => EXIT_OTHER,
            Failure::Usage(_) => EXIT_USAGE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable { server, why } => {
                write!(f, "cannot reach the scheduler at {server}: {why}")
            }
            Failure::Unauthorized => write!(
                f,
                "the admin API refused the token; pass --token or TWINBRIDGE_ADMIN_TOKEN"
            ),
            Failure::Api {
                status,
                code,
                message,
            } => write!(f, "{code}: {message} (HTTP {})", status.as_u16()),
            Failure::BadAnswer(why) => write!(f, "unexpected answer from the scheduler: {why}"),
            Failure::Usage(why) => write!(f, "{why}"),
        }
    }
}

/// Runs one admin command and returns the process exit status.
pub fn main(args: AdminArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twinbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("twinbridge admin: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// One request: method, path segments, query, body, and whether to show progress while waiting.
struct Call {
    method: Method,
    path: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    long: bool,
}

impl Call {
    fn get(path: &[&str]) -> Call {
        Call {
            method: Method::GET,
            path: path.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
            long: false,
        }
    }

    fn with(method: Method, path: &[&str], body: Option<Value>) -> Call {
        Call {
            method,
            body,
            ..Call::get(path)
        }
    }

    fn long(mut self) -> Call {
        self.long = true;
        self
    }
}

struct Client {
    http: reqwest::Client,
    base: Url,
    server: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &AdminArgs) -> Result<Client, Failure> {
        let base = Url::parse(&args.server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "--server {}: not an http(s) URL like http://127.0.0.1:8080",
                    args.server
                ))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(args.timeout.max(1)))
            .build()
            .map_err(|e| Failure::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            server: args.server.clone(),
            token: args.token.clone(),
        })
    }

    fn url(&self, call: &Call) -> Result<Url, Failure> {
        let mut url = self.base.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                Failure::Usage(format!("--server {}: cannot hold a path", self.server))
            })?;
            segments.pop_if_empty();
            segments.extend(&call.path);
        }
        if !call.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(call.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// Sends `call` and returns the raw body of a successful answer.
    async fn send(&self, call: &Call) -> Result<String, Failure> {
        let mut request = self.http.request(call.method.clone(), self.url(call)?);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let progress = call.long.then(Progress::start);
        let result = async {
            let response = request.send().await.map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| self.unreachable(&e))?;
            Ok::<_, Failure>((status, body))
        }
        .await;
        drop(progress);
        let (status, body) = result?;
        if status.is_success() {
            return Ok(body);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Failure::Unauthorized);
        }
        let parsed: Option<Value> = serde_json::from_str(&body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Err(Failure::Api {
            status,
            code: field("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message: field("message").unwrap_or_else(|| snippet(&body)),
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let why = if e.is_timeout() {
            "no answer in time (see --timeout)".to_string()
        } else {
            error_chain(e)
        };
        Failure::Unreachable {
            server: self.server.clone(),
            why,
        }
    }
}

/// An error and its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The start of a body that is not a JSON error, for the message.
fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return "(empty answer)".to_string();
    }
    trimmed.chars().take(200).collect()
}

/// "…working (Ns)" on stderr once a second while a long call runs, only when stderr is a terminal.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprint!("\r…working ({}s)", started.elapsed().as_secs());
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Clear the progress line.
            eprint!("\r\x1b[2K");
        }
    }
}

async fn run(args: AdminArgs) -> Result<(), Failure> {
    let client = Client::new(&args)?;
    let (call, render): (Call, fn(&Value) -> String) = match &args.command {
        AdminCommand::Fleet => (Call::get(&["v1", "fleet"]), render_fleet),
        AdminCommand::Shards => (Call::get(&["v1", "shards"]), render_shards),
        AdminCommand::Workers => (Call::get(&["v1", "workers"]), render_workers),
        AdminCommand::Thing { name } => (Call::get(&["v1", "things", name]), render_thing),
        AdminCommand::Deliveries { name, limit } => {
            let mut call = Call::get(&["v1", "things", name, "deliveries"]);
            if let Some(limit) = limit {
                call.query.push(("limit", limit.to_string()));
            }
            (call, render_deliveries)
        }
        AdminCommand::Shard { id } => (Call::get(&["v1", "shards", &id.to_string()]), render_shard),
        AdminCommand::Release { name } => (
            Call::with(Method::POST, &["v1", "things", name, "release"], None),
            render_release,
        ),
        AdminCommand::Move { name, shard } => (
            Call::with(
                Method::POST,
                &["v1", "things", name, "move"],
                Some(json!({ "shard": shard })),
            )
            .long(),
            render_move,
        ),
        AdminCommand::Drain { worker, undo } => {
            let method = if *undo { Method::DELETE } else { Method::POST };
            (
                Call::with(method, &["v1", "workers", worker, "drain"], None),
                render_drain,
            )
        }
        AdminCommand::Rebalance { apply } => {
            let mut call = Call::with(Method::POST, &["v1", "rebalance"], None);
            if *apply {
                call.query.push(("apply", "true".to_string()));
                call = call.long();
            }
            (call, render_rebalance)
        }
        AdminCommand::Sync => (
            Call::with(Method::POST, &["v1", "sync"], None).long(),
            render_sync,
        ),
        AdminCommand::Dlq(DlqCommand::List { limit, after }) => {
            let mut call = Call::get(&["v1", "dlq"]);
            if let Some(limit) = limit {
                call.query.push(("limit", limit.to_string()));
            }
            if let Some(after) = after {
                call.query.push(("after", after.clone()));
            }
            (call, render_dlq_list)
        }
        AdminCommand::Dlq(DlqCommand::Replay { ids, limit }) => {
            let mut body = serde_json::Map::new();
            if let Some(ids) = ids {
                body.insert("ids".into(), json!(ids));
            }
            if let Some(limit) = limit {
                body.insert("limit".into(), json!(limit));
            }
            (
                Call::with(
                    Method::POST,
                    &["v1", "dlq", "replay"],
                    Some(Value::Object(body)),
                )
                .long(),
                render_replay,
            )
        }
        AdminCommand::Dlq(DlqCommand::Purge { ids, all }) => {
            let body = match ids {
                Some(ids) => json!({ "ids": ids }),
                None => json!({ "all": all }),
            };
            (
                Call::with(Method::DELETE, &["v1", "dlq"], Some(body)),
                render_purge,
            )
        }
    };
    let body = client.send(&call).await?;
    if args.json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| Failure::BadAnswer(format!("not JSON ({e}): {}", snippet(&body))))?;
    print!("{}", render(&value));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendering: every accessor tolerates missing or mistyped fields ("-"), never panics.

/// A field as text: strings bare, numbers and booleans as written, null/missing as "-".
fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(other) => other.to_string(),
    }
}

fn number(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A list of scalars as `a, b, c` ("-" when empty).
fn list(v: &Value, pointer: &str) -> String {
    let items: Vec<String> = array(v, pointer)
        .iter()
        .map(|item| text(item, ""))
        .collect();
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}

/// A duration in ms as `850ms`, `42s`, `3m05s`, `2h07m`, `4d03h`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long ago an epoch-ms timestamp was, `12s ago` ("-" when missing).
fn ago(v: &Value, pointer: &str) -> String {
    match number(v, pointer) {
        Some(at) => format!("{} ago", duration(now_ms().saturating_sub(at))),
        None => "-".to_string(),
    }
}

/// Aligned columns under a header row.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label: value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:"), width = width + 1))
        .collect()
}

fn render_fleet(v: &Value) -> String {
    let mut pairs = vec![
        ("Things", text(v, "/things")),
        (
            "shards",
            format!(
                "{} ({} owned)",
                text(v, "/shards"),
                text(v, "/shards_owned")
            ),
        ),
        ("workers", text(v, "/workers")),
        ("backlog", text(v, "/backlog")),
        ("dead letters", text(v, "/dead_letters")),
        ("assignment version", text(v, "/assignment_version")),
    ];
    match v.get("launcher") {
        Some(l) if l.is_object() => {
            let mut launcher = format!("{} (leading: {})", text(l, "/kind"), text(l, "/leading"));
            if l.pointer("/last").is_some_and(Value::is_object) {
                launcher.push_str(&format!(
                    "; desired {}, running {}, starting {}, stopped {}",
                    text(l, "/last/desired"),
                    text(l, "/last/running"),
                    text(l, "/last/starting"),
                    text(l, "/last/stopped")
                ));
            }
            if !matches!(l.get("error"), None | Some(Value::Null)) {
                launcher.push_str(&format!("; error: {}", text(l, "/error")));
            }
            pairs.push(("launcher", launcher));
        }
        _ => pairs.push(("launcher", "- (no launch round yet)".to_string())),
    }
    fields(&pairs)
}

fn render_shards(v: &Value) -> String {
    let mut table = Table::new(&[
        "SHARD", "THINGS", "OWNER", "BACKLOG", "PENDING", "OLDEST", "DRAINING",
    ]);
    for s in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let oldest = match number(s, "/stream/oldest_age_ms") {
            Some(0) => "-".to_string(),
            Some(ms) => duration(ms),
            None => "-".to_string(),
        };
        table.row(vec![
            text(s, "/shard/id"),
            format!(
                "{}/{}",
                text(s, "/shard/members"),
                text(s, "/shard/capacity")
            ),
            text(s, "/shard/owner"),
            text(s, "/stream/length"),
            text(s, "/stream/pending"),
            oldest,
            text(s, "/shard/draining"),
        ]);
    }
    table.render()
}

fn render_workers(v: &Value) -> String {
    let workers = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if workers.is_empty() {
        return "no live workers\n".to_string();
    }
    let mut table = Table::new(&[
        "WORKER",
        "HOST",
        "PID",
        "SHARDS",
        "DRAINING",
        "HEARTBEAT",
        "VERSION",
    ]);
    for w in workers {
        table.row(vec![
            text(w, "/id"),
            text(w, "/host"),
            text(w, "/pid"),
            format!(
                "{} ({}/{})",
                list(w, "/shards"),
                array(w, "/shards").len(),
                text(w, "/capacity")
            ),
            text(w, "/draining"),
            ago(w, "/last_heartbeat_ms"),
            text(w, "/version"),
        ]);
    }
    table.render()
}

fn render_thing(v: &Value) -> String {
    let activity = if number(v, "/last_activity_ms").is_some() {
        ago(v, "/last_activity_ms")
    } else {
        "never".to_string()
    };
    // The model is the property map: name → {base_type, category}.
    let properties = v.pointer("/thing/model").and_then(Value::as_object);
    let mut out = fields(&[
        ("Thing", text(v, "/thing/name")),
        ("shard", text(v, "/thing/shard")),
        ("owner", text(v, "/owner")),
        ("template", text(v, "/thing/template")),
        ("model version", text(v, "/thing/model_version")),
        ("last activity", activity),
        (
            "properties",
            properties.map_or("-".to_string(), |p| p.len().to_string()),
        ),
    ]);
    if let Some(properties) = properties.filter(|p| !p.is_empty()) {
        let mut table = Table::new(&["  PROPERTY", "TYPE", "CATEGORY"]);
        for (name, def) in properties {
            table.row(vec![
                format!("  {name}"),
                text(def, "/base_type"),
                text(def, "/category"),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

fn render_deliveries(v: &Value) -> String {
    let records = array(v, "/deliveries");
    if records.is_empty() {
        return format!("no deliveries recorded for {}\n", text(v, "/thing"));
    }
    let mut table = Table::new(&[
        "DONE", "KIND", "OUTCOME", "VALUES", "LATENCY", "SOURCE", "POSITION", "REASON",
    ]);
    for r in records {
        let why = match (r.pointer("/reason"), r.pointer("/detail")) {
            (Some(_), Some(_)) => format!("{}: {}", text(r, "/reason"), text(r, "/detail")),
            (Some(_), None) => text(r, "/reason"),
            _ => String::new(),
        };
        table.row(vec![
            ago(r, "/done_at_ms"),
            text(r, "/kind"),
            text(r, "/outcome"),
            text(r, "/values"),
            number(r, "/latency_ms").map_or("-".to_string(), duration),
            format!("{} {}", text(r, "/source/kind"), text(r, "/source/name")),
            text(r, "/source/position"),
            why,
        ]);
    }
    table.render()
}

fn render_shard(v: &Value) -> String {
    let oldest = match number(v, "/stream/oldest_age_ms") {
        Some(0) | None => "-".to_string(),
        Some(ms) => duration(ms),
    };
    let things = array(v, "/things");
    let mut out = fields(&[
        ("shard", text(v, "/shard/id")),
        (
            "Things",
            format!(
                "{}/{}",
                text(v, "/shard/members"),
                text(v, "/shard/capacity")
            ),
        ),
        ("owner", text(v, "/shard/owner")),
        ("draining", text(v, "/shard/draining")),
        ("backlog", text(v, "/stream/length")),
        ("pending", text(v, "/stream/pending")),
        ("oldest entry", oldest),
    ]);
    if !things.is_empty() {
        let names: Vec<String> = things
            .iter()
            .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_string))
            .collect();
        out.push_str(&format!("  {}\n", names.join(" ")));
    }
    out
}

fn render_release(v: &Value) -> String {
    format!(
        "released {}: it is delivered from shard {} from now on\n",
        text(v, "/thing"),
        text(v, "/shard")
    )
}

fn render_moves(moves: &[Value]) -> String {
    let mut table = Table::new(&["THING", "FROM", "TO"]);
    for m in moves {
        table.row(vec![text(m, "/thing"), text(m, "/from"), text(m, "/to")]);
    }
    table.render()
}

fn render_move(v: &Value) -> String {
    let mut out = render_moves(array(v, "/moves"));
    out.push_str(&fields(&[
        ("move id", text(v, "/move_id")),
        ("assignment version", text(v, "/assignment_version")),
    ]));
    out
}

fn render_drain(v: &Value) -> String {
    if v.get("draining").and_then(Value::as_bool) == Some(true) {
        format!(
            "worker {} is draining; handing over shards: {}\n",
            text(v, "/worker"),
            list(v, "/shards")
        )
    } else {
        format!(
            "worker {}: drain cancelled; it takes shards again\n",
            text(v, "/worker")
        )
    }
}

fn render_rebalance(v: &Value) -> String {
    let moves = array(v, "/plan/thing_moves");
    let handoffs = array(v, "/plan/shard_handoffs");
    let applied = v.get("applied").and_then(Value::as_bool) == Some(true);
    if moves.is_empty() && handoffs.is_empty() {
        return "the fleet is balanced: nothing to do\n".to_string();
    }
    let mut out = String::new();
    if !moves.is_empty() {
        out.push_str(&format!("Thing moves ({}):\n", moves.len()));
        out.push_str(&render_moves(moves));
    }
    if !handoffs.is_empty() {
        out.push_str(&format!("shard hand-offs ({}):\n", handoffs.len()));
        let mut table = Table::new(&["SHARD", "FROM", "TO"]);
        for h in handoffs {
            table.row(vec![text(h, "/shard"), text(h, "/from"), text(h, "/to")]);
        }
        out.push_str(&table.render());
    }
    if applied {
        out.push_str(&format!("applied (move id {})\n", text(v, "/move_id")));
    } else {
        out.push_str("not applied: run `twinbridge admin rebalance --apply` to carry it out\n");
    }
    out
}

fn render_sync(v: &Value) -> String {
    let failed = array(v, "/failed");
    let mut out = fields(&[
        ("discovered", text(v, "/discovered")),
        ("added", text(v, "/added")),
        ("updated", text(v, "/updated")),
        ("removed", text(v, "/removed")),
        ("unchanged", text(v, "/unchanged")),
        ("shards created", text(v, "/shards_created")),
        ("failed", failed.len().to_string()),
        ("assignment version", text(v, "/version")),
    ]);
    if !failed.is_empty() {
        let mut table = Table::new(&["  THING", "WHY"]);
        for f in failed {
            table.row(vec![format!("  {}", text(f, "/0")), text(f, "/1")]);
        }
        out.push_str(&table.render());
    }
    out
}

fn render_dlq_list(v: &Value) -> String {
    let letters = array(v, "/letters");
    let count = text(v, "/count");
    if letters.is_empty() {
        return format!("no dead letters here ({count} in the queue)\n");
    }
    let mut table = Table::new(&[
        "ID",
        "REASON",
        "THING",
        "SOURCE",
        "FIRST FAILURE",
        "ATTEMPTS",
        "DETAIL",
    ]);
    for item in letters {
        let detail: String = text(item, "/letter/reason/detail")
            .chars()
            .take(60)
            .collect();
        table.row(vec![
            text(item, "/id"),
            text(item, "/letter/reason/code"),
            text(item, "/letter/envelope/thing"),
            format!(
                "{} {}",
                text(item, "/letter/envelope/source/kind"),
                text(item, "/letter/envelope/source/name")
            ),
            ago(item, "/letter/first_failure_ms"),
            text(item, "/letter/attempts"),
            detail,
        ]);
    }
    let mut out = table.render();
    out.push_str(&format!("{} shown, {count} in the queue", letters.len()));
    if number(v, "/count").is_some_and(|c| c > letters.len() as u64) {
        if let Some(last) = letters.last() {
            out.push_str(&format!("; next page: --after {}", text(last, "/id")));
        }
    }
    out.push('\n');
    out
}

fn render_replay(v: &Value) -> String {
    format!(
        "replayed {}, skipped {} (their Thing has no shard)\n",
        text(v, "/replayed"),
        text(v, "/skipped")
    )
}

fn render_purge(v: &Value) -> String {
    format!("removed {}\n", text(v, "/removed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderers_survive_unexpected_json() {
        let odd = [
            json!(null),
            json!(42),
            json!("x"),
            json!([1, {"shard": 3}]),
            json!({"letters": "no", "plan": [], "moves": {}, "thing": {"model": 1}}),
        ];
        let renderers: [fn(&Value) -> String; 14] = [
            render_fleet,
            render_shards,
            render_workers,
            render_thing,
            render_deliveries,
            render_shard,
            render_release,
            render_move,
            render_drain,
            render_rebalance,
            render_sync,
            render_dlq_list,
            render_replay,
            render_purge,
        ];
        for v in &odd {
            for render in renderers {
                let _ = render(v);
            }
        }
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          BB\nlong cell  x\n");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5), "5ms");
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_620_000), "2h07m");
        assert_eq!(duration(97_200_000), "1d03h");
    }

    #[test]
    fn shards_show_things_over_capacity() {
        let v = json!([{"shard": {"id": 1, "capacity": 10, "members": 4, "owner": "w1", "draining": false},
                        "stream": {"length": 7, "pending": 2, "undelivered": 5, "oldest_age_ms": 3000}}]);
        let out = render_shards(&v);
        let line = out.lines().nth(1).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, ["1", "4/10", "w1", "7", "2", "3s", "no"]);
    }
}
