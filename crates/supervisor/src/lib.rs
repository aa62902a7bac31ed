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
//! default), `mock` the scripted and mockall sources for tests, `ipfix`
//! flow export to IPFIX collectors, `otlp` flow export as OpenTelemetry
//! log records (OTLP/gRPC). The `flowtrack` command is a crate of its own
//! (package `flowtrack`), so this library brings no command-line, HTTP or
//! metrics crates (unless asked for `otlp`: its gRPC client is tonic's).
//!
//! - [`merge`]: the merge engine — any number of [`FlowSource`]s, one
//!   stream of [`merge::MergedItem`]s tagged with their backend.
//! - [`output`]: JSON-lines and text writers.
//! - [`pipeline`]: drives a merged stream into a writer.
//! - [`replay`]: recorded lines back as the merged stream that wrote them.
//! - [`backend`]: opens backends by name (`auto`, `ebpf`, `nflog`, `both`).
//! - [`audit`]: a policy in audit mode, on any backend: the flows it
//!   would deny, reported.
//! - `export` (feature `ipfix`): flow records to IPFIX collectors over UDP
//!   or TCP, and (feature `otlp`) to OpenTelemetry collectors over
//!   OTLP/gRPC.
//!
//! The event vocabulary is [`flow_core`]'s, re-exported here.

pub mod audit;
pub mod backend;
mod columns;
pub mod dedup;
#[cfg(feature = "ipfix")]
pub mod export;
pub mod merge;
pub mod output;
pub mod pipeline;
pub mod replay;
pub mod summary;

pub use flow_core;
pub use flow_core::{
    CloseReason, FlowError, FlowEvent, FlowEventKind, FlowKey, FlowSource, FlowStream, LossPoint,
};
pub use flow_policy;

/// The eBPF backend crate.
#[cfg(feature = "ebpf")]
pub use flow_backend_ebpf as ebpf;
/// Scripted and mockall flow sources for tests, and replay.
#[cfg(feature = "mock")]
pub use flow_backend_mock as mock;
/// The conntrack + nfnetlink_log backend crate.
#[cfg(feature = "nflog")]
pub use flow_backend_nflog as nflog;

/// A name that is none of a choice's names (an output format, a backend).
///
/// ```
/// use flow_supervisor::output::OutputFormat;
/// let error = "xml".parse::<OutputFormat>().unwrap_err();
/// assert_eq!(error.to_string(), "unknown name \"xml\": expected one of text, json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {given:?}: expected one of {}", expected.join(", "))]
pub struct UnknownName {
    /// The name given.
    pub given: String,
    /// The names that exist.
    pub expected: Vec<&'static str>,
}

impl UnknownName {
    /// The value of `all` whose `name` is `given`.
    fn find<T: Copy>(given: &str, all: &[T], name: fn(&T) -> &'static str) -> Result<T, Self> {
        all.iter()
            .find(|value| name(value) == given)
            .copied()
            .ok_or_else(|| Self {
                given: given.to_owned(),
                expected: all.iter().map(name).collect(),
            })
    }
}

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(all(doctest, feature = "mock"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
