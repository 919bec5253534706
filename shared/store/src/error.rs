//! Errors of the fleet store.

use twinbridge_core::ShardId;

use crate::api::LeaseKey;

/// Every way a store operation can fail. [`StoreError::is_retryable`] says which are worth
/// retrying as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an I/O-level failure. Retry with backoff.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A fenced operation (ack, checkpoint, renew, release) was refused: the caller's lease is no
    /// longer the live one. The caller must stop acting on the resource at once.
    #[error("lease on {key} lost: token {token} is no longer current")]
    LeaseLost { key: LeaseKey, token: u64 },
    /// Someone else holds a live lease on the resource.
    #[error("lease on {key} is held by {holder}")]
    LeaseHeld { key: LeaseKey, holder: String },
    /// A shard has no room for the Things being assigned to it.
    #[error("shard {shard} is full: capacity {capacity}, {members} assigned, {requested} more requested")]
    ShardFull {
        shard: ShardId,
        capacity: u32,
        members: u32,
        requested: u32,
    },
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A key holds a value of the wrong Redis type (someone else wrote to our key space).
    #[error("key {key} holds the wrong type of value: {detail}")]
    WrongType { key: String, detail: String },
    /// A stored value could not be decoded.
    #[error("stored value at {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// The caller asked for something invalid (empty name, zero capacity…).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Any other error the backend reported.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same call may succeed later without anybody changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
