//! The embedded in-memory fleet store: same semantics as Redis, one process.
//!
//! TODO(store-memory helper): implement `FleetStore` for `MemoryStore`.

/// The embedded fleet store. Cheap to clone (clones share state).
#[derive(Clone, Default)]
pub struct MemoryStore {
    // filled in by the implementation
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}
