//! ThingWorx REST client: a pooled keep-alive HTTP client speaking the platform's InfoTable JSON,
//! typed property values with documented coercion from device JSON, and error classes the worker
//! acts on (see `docs/platform.md`).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;
pub mod infotable;
pub mod request;
pub mod value;

pub use client::{BulkFailure, NewThing, PlatformClient};
pub use config::{AppKey, PlatformConfig, TlsOptions};
pub use error::{CoercionError, PlatformError};
pub use infotable::{DataShape, FieldDefinition, InfoTable};
pub use request::{PropertyDefinition, Quality, Vtq};
pub use value::{coerce, Location, PropertyValue};

/// The tag that marks a Thing as connected through twinbridge (`Vocabulary:Term`).
pub const CONNECTED_THING_TAG: &str = "AWS_CONNECTED_THING:AWS_CONNECTED_THING";
/// The property category of values the fleet writes from devices.
pub const CATEGORY_BOUND: &str = "AWSConnectorBound";
/// The property category of values users edit in ThingWorx and the fleet writes back to devices.
pub const CATEGORY_WRITABLE: &str = "AWSConnectorWritable";
