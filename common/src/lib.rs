//! weir-common: the event model, the severity scale and the agent ↔ aggregator wire protocol.
//!
//! No I/O lives here (no tokio, quinn or redb): everything is plain data and pure functions, so
//! both processes and the tests share one definition of what an event is and how it travels.

pub mod config;
pub mod event;
pub mod ingest;
pub mod net;
pub mod severity;
pub mod trap_policy;
pub mod wire;

pub use event::{Event, InputKind, Record, event_id, parse_event_id};
pub use severity::{ParseSeverityError, Severity};

pub mod telemetry;
