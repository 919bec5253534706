//! twinbridge's domain model, shared by every service and the fleet store.
//!
//! Everything here is plain data with serde round-trips; no I/O.
#![forbid(unsafe_code)]

pub mod control;
pub mod delivery;
pub mod dlq;
pub mod envelope;
pub mod messages;
pub mod shard;
pub mod thing;
pub mod time;

pub use control::Control;
pub use delivery::{trace_id_of, DeliveryOutcome, DeliveryRecord, RecordDecodeError};
pub use dlq::{DeadLetter, DeadLetterReason};
pub use envelope::{
    DecodeError, EncodedEnvelope, Envelope, MessageKind, Payload, Source, SourceKind,
    ENVELOPE_VERSION,
};
pub use messages::{PresenceEvent, PresenceEventType, PropertyChange};
pub use shard::{FencingToken, Shard, ShardId, WorkerId, WorkerInfo};
pub use thing::{BaseType, PropertyDef, PropertyModel, Thing, ThingName};
