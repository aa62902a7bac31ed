//! flowtrack's supervisor: merges flow sources into one stream and writes it.
//!
//! This is the crate a downstream program depends on:
//!
//! ```toml
//! [dependencies]
//! flow-supervisor = { version = "0.1", default-features = false, features = ["ebpf"] }
//! ```
//!
//! Features: `ebpf` and `nflog` compile in the kernel backends (both on by
//! default), `mock` the scripted and mockall sources for tests, `cli` the
//! `flowtrack` binary.
//!
//! - [`merge`]: the merge engine — any number of [`FlowSource`]s, one
//!   stream of [`merge::MergedItem`]s tagged with their backend.
//! - [`output`]: JSON-lines and text writers.
//! - [`pipeline`]: drives a merged stream into a writer.
//! - [`backend`]: opens backends by name (`auto`, `ebpf`, `nflog`, `both`).
//!
//! The event vocabulary is [`flow_core`]'s, re-exported here.

pub mod backend;
pub mod dedup;
pub mod merge;
pub mod output;
pub mod pipeline;
pub mod summary;

pub use flow_core;
pub use flow_core::{
    FlowError, FlowEvent, FlowEventKind, FlowKey, FlowSource, FlowStream, LossPoint,
};

/// The eBPF backend crate.
#[cfg(feature = "ebpf")]
pub use flow_backend_ebpf as ebpf;
/// Scripted and mockall flow sources for tests, and replay.
#[cfg(feature = "mock")]
pub use flow_backend_mock as mock;
/// The conntrack + nfnetlink_log backend crate.
#[cfg(feature = "nflog")]
pub use flow_backend_nflog as nflog;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(all(doctest, feature = "mock"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
