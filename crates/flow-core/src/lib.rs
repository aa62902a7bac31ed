//! The flow event contract of flowtrack.
//!
//! Every backend — the eBPF `cgroup_skb` program, ctnetlink + nfnetlink_log,
//! and the scriptable mock — turns what it observes into the same vocabulary,
//! defined here and only here:
//!
//! - [`FlowKey`]: the 5-tuple of a connection, oriented initiator → responder.
//! - [`FlowEvent`]: a [`FlowEventKind`] that happened to a key at a
//!   CLOCK_MONOTONIC time ([`clock`]).
//! - [`FlowError`]: either a recoverable, in-band report that observations
//!   were lost ([`FlowError::Lost`]), or a fatal error that ends a source.
//! - [`FlowSource`]: the one object-safe trait every backend implements.
//!
//! With the `serde` feature, [`record`] defines flowtrack's JSON-lines
//! output schema, which `flowtrack replay` reads back.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//!
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?);
//! let opened = FlowEvent::opened(key, 1_000);
//! let closed = FlowEvent::closed(key, 12, 3_400, 2_000);
//! assert_eq!(opened.to_string(), "opened tcp 10.0.0.1:40000 -> 10.0.0.2:443 at 0.000001000s");
//! assert!(closed.to_string().ends_with("(12 packets, 3400 bytes)"));
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

#[cfg(feature = "serde")]
pub mod arc_memo;
mod by_name;
pub mod clock;
pub mod counters;
pub mod display;
pub mod dns;
mod error;
mod event;
#[cfg(feature = "serde")]
mod json_fragments;
#[cfg(feature = "serde")]
mod json_line;
mod key;
pub mod process;
pub mod protocol;
#[cfg(feature = "serde")]
pub mod record;
mod source;
pub mod workload;

pub use error::{ConfigError, FlowError, LossPoint};
pub use event::{CloseReason, FlowEvent, FlowEventKind, IntoName};
pub use key::FlowKey;
pub use source::{FlowSource, FlowStream};
