//! The `ebpf` backend of flowtrack: an eBPF `cgroup_skb` program loaded with aya, reading flow records from a BPF ring buffer.
//!
//! Not built yet (issue #3). The crate exists so that the
//! `flow-supervisor` feature `ebpf` compiles and the supervisor can say
//! clearly that this backend is not available in this build.

/// The backend's name, as the output's `backend` field shows it.
pub const BACKEND_NAME: &str = "ebpf";

/// Why this backend cannot run yet, for the supervisor's error message.
pub const NOT_BUILT_REASON: &str =
    "not built yet (issue #3); this version of flowtrack can only replay recorded flows";
