//! The `nflog` backend of flowtrack: ctnetlink conntrack events and nfnetlink_log packets read over netlink with neli.
//!
//! Not built yet (issue #6). The crate exists so that the
//! `flow-supervisor` feature `nflog` compiles and the supervisor can say
//! clearly that this backend is not available in this build.

/// The backend's name, as the output's `backend` field shows it.
pub const BACKEND_NAME: &str = "nflog";

/// Why this backend cannot run yet, for the supervisor's error message.
pub const NOT_BUILT_REASON: &str =
    "not built yet (issue #6); this version of flowtrack can only replay recorded flows";
