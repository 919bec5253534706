//! Auto-provisioning: devices that send data before their Thing exists. With
//! `router.unknown_thing = "provision"` the routers hold such messages in the DLQ (reason
//! `awaiting_provisioning`, the device's Thing name kept); each round the leader scheduler collects
//! those Things, creates each one in the platform from the configured template and tags (the
//! discovery tag included, so later syncs keep it), reads and assigns it like discovery does, and
//! replays its held messages onto its new shard in their original order.
//!
//! A Thing whose creation or assignment fails keeps its messages in the DLQ and is tried again next
//! round. Off by default.

use std::collections::BTreeMap;

use twinbridge_config::AutoProvision;
use twinbridge_platform::{NewThing, PlatformClient};
use twinbridge_store::{EntryId, FleetStore};

use crate::sync::{assign_named, SyncError, SyncSettings};

/// The dead-letter reason code of held messages.
pub const AWAITING: &str = "awaiting_provisioning";

/// Most dead letters looked at per round.
const SCAN_LIMIT: usize = 100_000;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Things created in the platform (those that already existed are not counted).
    pub created: usize,
    /// Things assigned to a shard.
    pub assigned: usize,
    /// Held messages replayed onto their shard.
    pub replayed: u64,
    /// Things that could not be created or assigned, with the reason (retried next round).
    pub failed: Vec<(String, String)>,
}

/// Runs one provisioning round.
pub async fn provision_round(
    platform: &PlatformClient,
    store: &dyn FleetStore,
    sync: &SyncSettings,
    cfg: &AutoProvision,
) -> Result<ProvisionReport, SyncError> {
    // Held letters per Thing, in DLQ (= arrival) order.
    let mut held: BTreeMap<String, Vec<EntryId>> = BTreeMap::new();
    let mut after: Option<EntryId> = None;
    let mut scanned = 0;
    while scanned < SCAN_LIMIT {
        let page = store.list_dead_letters(after.as_ref(), 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        scanned += page.len();
        for (id, letter) in page {
            if letter.reason.code == AWAITING && !letter.envelope.thing.is_empty() {
                let thing = letter.envelope.thing.clone();
                if held.len() < cfg.max_per_round || held.contains_key(&thing) {
                    held.entry(thing).or_default().push(id);
                }
            }
        }
    }
    let mut report = ProvisionReport::default();
    if held.is_empty() {
        return Ok(report);
    }
    let mut tags = cfg.tags.clone();
    if !tags.contains(&sync.tag) {
        tags.push(sync.tag.clone());
    }
    let mut ready = Vec::new();
    for thing in held.keys() {
        let new = NewThing {
            name: thing.clone(),
            template: cfg.template.clone(),
            description: "created by twinbridge auto-provisioning".into(),
            tags: tags.clone(),
        };
        match platform.ensure_thing(&new).await {
            Ok(created) => {
                if created {
                    report.created += 1;
                    metrics::counter!("twinbridge_scheduler_things_provisioned_total").increment(1);
                    tracing::info!(thing = %thing, template = %cfg.template, "Thing created in the platform");
                }
                ready.push(thing.clone());
            }
            Err(e) => {
                tracing::warn!(thing = %thing, error = %e, "cannot provision a Thing; its messages stay held");
                report.failed.push((thing.clone(), e.to_string()));
            }
        }
    }
    let assigned = assign_named(platform, store, sync, &ready).await?;
    report.assigned = assigned.added;
    for (thing, why) in &assigned.failed {
        report.failed.push((thing.clone(), why.clone()));
    }
    let failed: std::collections::HashSet<&String> =
        assigned.failed.iter().map(|(t, _)| t).collect();
    let ids: Vec<EntryId> = ready
        .iter()
        .filter(|t| !failed.contains(t))
        .flat_map(|t| held.get(t).cloned().unwrap_or_default())
        .collect();
    if !ids.is_empty() {
        let outcome = store.replay_dead_letters(Some(&ids), ids.len()).await?;
        report.replayed = outcome.replayed;
    }
    tracing::info!(
        created = report.created,
        assigned = report.assigned,
        replayed = report.replayed,
        failed = report.failed.len(),
        "auto-provisioning round done"
    );
    Ok(report)
}
