//! Flow sources for tests and replay: the `mock` backend of flowtrack.
//!
//! - [`ScriptedSource`]: a real [`FlowSource`] that plays a script — events,
//!   loss items, errors and delays — built from a list, an iterator, a
//!   channel, or a recorded JSON-lines file ([`Replay`]).
//! - [`MockFlowSource`]: a [mockall] mock of the trait, for checking how code
//!   calls a source.
//!
//! ```
//! use flow_backend_mock::ScriptedSource;
//! use flow_core::{FlowKey, FlowSource, LossPoint};
//! use futures::StreamExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
//! let mut source = ScriptedSource::builder("mock")
//!     .opened(key, 1)
//!     .lost(LossPoint::RingBufferFull, Some(2))
//!     .closed(key, 4, 240, 9)
//!     .build();
//! let items: Vec<_> = source.start().await?.collect().await;
//! assert_eq!(items.len(), 3);
//! assert!(items[1].as_ref().is_err_and(|e| e.is_recoverable()));
//! # Ok::<(), flow_core::FlowError>(())
//! # }).unwrap();
//! ```
//!
//! [`FlowSource`]: flow_core::FlowSource

mod mock;
mod replay;
mod scripted;

pub use mock::MockFlowSource;
pub use replay::Replay;
pub use scripted::{ScriptBuilder, ScriptedSource, Step};

/// The backend name scripted sources get unless told otherwise.
pub const BACKEND_NAME: &str = "mock";
