//! Discovery and assignment: read the connected Things and their property models from ThingWorx,
//! add new Things to shards with spare capacity (creating shards as needed), update changed
//! models (model version + 1, same shard: assignment is stable), remove Things no longer tagged.
//! One Thing that fails is reported and skipped; it never aborts the sync.

use std::collections::HashMap;

use futures::StreamExt;
use twinbridge_core::{PropertyModel, ShardId, Thing};
use twinbridge_platform::{PlatformClient, PlatformError};
use twinbridge_store::{FleetStore, StoreError};

/// What a sync reads and how it assigns.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub tag: String,
    /// Categories whose properties make up a Thing's model (bound, writable).
    pub categories: Vec<String>,
    pub concurrency: usize,
    pub shard_capacity: u32,
    /// Most Things listed from the platform.
    pub max_things: u32,
    /// Also read each Thing's ThingTemplate (needed by per-template mappings; one more call per
    /// Thing).
    pub read_templates: bool,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub discovered: usize,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub shards_created: usize,
    /// Things that could not be read, with the reason.
    pub failed: Vec<(String, String)>,
    pub version: u64,
}

/// Why a sync could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("listing Things tagged {tag}: {source}")]
    List { tag: String, source: PlatformError },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

const CHUNK: usize = 1_000;

/// Runs one discovery + assignment pass.
type Read = Result<(PropertyModel, Option<String>), PlatformError>;

/// Reads the property model (and template, when templates are used) of each named Thing,
/// `settings.concurrency` requests in flight.
async fn read_models(
    platform: &PlatformClient,
    names: &[String],
    settings: &SyncSettings,
) -> Vec<(String, Read)> {
    let categories: Vec<&str> = settings.categories.iter().map(String::as_str).collect();
    let read_templates = settings.read_templates;
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let categories = categories.clone();
            async move {
                let read = async {
                    let model = platform.property_model(&name, &categories).await?;
                    let template = if read_templates {
                        platform.thing_template(&name).await?
                    } else {
                        None
                    };
                    Ok((model, template))
                }
                .await;
                (name, read)
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await
}

/// Places new Things into spare capacity, in shard order, then into new shards.
async fn place_new(
    store: &dyn FleetStore,
    new: Vec<(String, PropertyModel, Option<String>)>,
    settings: &SyncSettings,
    report: &mut SyncReport,
    out: &mut Vec<Thing>,
) -> Result<(), SyncError> {
    let mut spare: Vec<(ShardId, u32)> = store
        .list_shards()
        .await?
        .into_iter()
        .filter(|s| !s.draining)
        .map(|s| (s.id, s.spare()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut slot = 0;
    for (name, model, template) in new {
        while slot < spare.len() && spare[slot].1 == 0 {
            slot += 1;
        }
        if slot == spare.len() {
            let shard = store.create_shard(settings.shard_capacity).await?;
            report.shards_created += 1;
            spare.push((shard.id, shard.capacity));
        }
        spare[slot].1 -= 1;
        report.added += 1;
        out.push(Thing {
            name,
            shard: spare[slot].0,
            model,
            model_version: 1,
            template,
        });
    }
    Ok(())
}

/// Reads and assigns the named Things that the fleet does not know yet (auto-provisioning: a
/// Thing just created in the platform). Things already assigned are left alone; one that cannot
/// be read is reported in `failed`.
pub async fn assign_named(
    platform: &PlatformClient,
    store: &dyn FleetStore,
    settings: &SyncSettings,
    names: &[String],
) -> Result<SyncReport, SyncError> {
    let known = store.get_things(names).await?;
    let unknown: Vec<String> = names
        .iter()
        .zip(known)
        .filter(|(_, k)| k.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let mut report = SyncReport {
        discovered: unknown.len(),
        unchanged: names.len() - unknown.len(),
        ..SyncReport::default()
    };
    let mut new = Vec::new();
    for (name, read) in read_models(platform, &unknown, settings).await {
        match read {
            Ok((model, template)) => new.push((name, model, template)),
            Err(e) => report.failed.push((name, e.to_string())),
        }
    }
    new.sort_by(|a, b| a.0.cmp(&b.0));
    let mut things = Vec::new();
    place_new(store, new, settings, &mut report, &mut things).await?;
    for chunk in things.chunks(CHUNK) {
        report.version = store.put_things(chunk).await?.0;
    }
    Ok(report)
}

pub async fn sync_once(
    platform: &PlatformClient,
    store: &dyn FleetStore,
    settings: &SyncSettings,
) -> Result<SyncReport, SyncError> {
    let started = std::time::Instant::now();
    let names = platform
        .list_things_by_tag(&settings.tag, settings.max_things, None)
        .await
        .map_err(|source| SyncError::List {
            tag: settings.tag.clone(),
            source,
        })?;
    let mut report = SyncReport {
        discovered: names.len(),
        ..SyncReport::default()
    };
    let models = read_models(platform, &names, settings).await;

    let existing: HashMap<String, Thing> = store
        .list_things()
        .await?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut changed: Vec<Thing> = Vec::new();
    let mut new: Vec<(String, PropertyModel, Option<String>)> = Vec::new();
    for (name, read) in models {
        let (model, template) = match read {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(thing = %name, error = %e, "skipping a Thing whose definitions cannot be read");
                report.failed.push((name, e.to_string()));
                continue;
            }
        };
        // Without template reads, keep what is known.
        let template = if settings.read_templates {
            template
        } else {
            existing.get(&name).and_then(|t| t.template.clone())
        };
        match existing.get(&name) {
            Some(old) if old.model == model && old.template == template => report.unchanged += 1,
            Some(old) => {
                report.updated += 1;
                changed.push(Thing {
                    model,
                    template,
                    model_version: old.model_version + 1,
                    ..old.clone()
                });
            }
            None => new.push((name, model, template)),
        }
    }
    new.sort_by(|a, b| a.0.cmp(&b.0));

    // Removed first (tagged no more; the listing succeeded), so their slots take new Things.
    let listed: std::collections::HashSet<&String> = names.iter().collect();
    let gone: Vec<String> = existing
        .keys()
        .filter(|n| !listed.contains(n))
        .cloned()
        .collect();
    report.removed = gone.len();
    for chunk in gone.chunks(CHUNK) {
        report.version = store.remove_things(chunk).await?.0;
    }

    place_new(store, new, settings, &mut report, &mut changed).await?;
    for chunk in changed.chunks(CHUNK) {
        report.version = store.put_things(chunk).await?.0;
    }

    if report.version == 0 {
        report.version = store.assignment_version().await?.0;
    }
    metrics::counter!("twinbridge_scheduler_syncs_total").increment(1);
    metrics::gauge!("twinbridge_scheduler_things")
        .set((report.discovered - report.failed.len()) as f64);
    tracing::info!(
        discovered = report.discovered,
        added = report.added,
        updated = report.updated,
        removed = report.removed,
        failed = report.failed.len(),
        shards_created = report.shards_created,
        took_ms = started.elapsed().as_millis() as u64,
        "sync done"
    );
    Ok(report)
}
