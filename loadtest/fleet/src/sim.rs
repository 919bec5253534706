//! The platform simulator's admin API (`/_sim/stats`, `/_sim/writes`) as the judge of a load
//! run: a generator notes the newest write before it starts, then waits until the writes its
//! accepted messages cause have all been recorded, and compares them with what it sent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// One property write the simulator recorded.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteRow {
    pub thing: String,
    pub property: String,
    pub value: Value,
    /// Global arrival order at the simulator.
    pub seq: u64,
    /// The VTQ time (epoch ms): the device timestamp.
    pub time: i64,
    pub arrival_ms: u64,
}

#[derive(Deserialize)]
struct Writes {
    writes: Vec<WriteRow>,
}

/// A client of one simulator's admin API.
#[derive(Clone)]
pub struct SimProbe {
    root: String,
    http: reqwest::Client,
}

impl SimProbe {
    /// `root` is the simulator's root URL (`http://127.0.0.1:8099`, the admin API is under
    /// `/_sim`); a trailing `/` or `/Thingworx` is ignored.
    pub fn new(root: &str) -> Self {
        let root = root.trim_end_matches('/');
        let root = root.strip_suffix("/Thingworx").unwrap_or(root);
        SimProbe {
            root: root.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/_sim{path}", self.root);
        let r = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        r.json().await.with_context(|| format!("GET {url}: body"))
    }

    /// `property_writes_total` of `/_sim/stats`.
    pub async fn writes_total(&self) -> Result<u64> {
        let stats = self.get("/stats").await?;
        stats["property_writes_total"]
            .as_u64()
            .context("/_sim/stats has no property_writes_total")
    }

    /// The arrival number of the newest write (0 when there is none).
    pub async fn latest_seq(&self) -> Result<u64> {
        Ok(self
            .writes_since(0, 1)
            .await?
            .iter()
            .map(|w| w.seq)
            .max()
            .unwrap_or(0))
    }

    /// Writes that arrived after `seq`, among the newest `limit` ones, in arrival order.
    pub async fn writes_since(&self, seq: u64, limit: usize) -> Result<Vec<WriteRow>> {
        let v = self.get(&format!("/writes?limit={limit}")).await?;
        let mut rows: Vec<WriteRow> = serde_json::from_value::<Writes>(v)
            .context("/_sim/writes")?
            .writes
            .into_iter()
            .filter(|w| w.seq > seq)
            .collect();
        rows.sort_by_key(|w| w.seq);
        Ok(rows)
    }

    /// Waits until at least `expected` writes arrived after `since` and their number has not
    /// changed for `settle` (so duplicates would show), or until nothing new arrived for
    /// `stall`; returns the writes seen.
    pub async fn wait_writes(
        &self,
        since: u64,
        expected: usize,
        settle: Duration,
        stall: Duration,
    ) -> Result<Vec<WriteRow>> {
        // Room for duplicates beyond what is expected, so they are counted too.
        let limit = expected.saturating_mul(2).saturating_add(1000);
        let mut last = 0;
        let mut changed = Instant::now();
        loop {
            let rows = self.writes_since(since, limit).await?;
            if rows.len() != last {
                last = rows.len();
                changed = Instant::now();
            }
            let quiet = changed.elapsed();
            if (rows.len() >= expected && quiet >= settle) || quiet >= stall {
                return Ok(rows);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
