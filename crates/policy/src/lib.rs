//! flowtrack's egress policy: what a workload may connect to.
//!
//! - [`rule`]: one rule, `PROTO://DEST[:PORTS]`, the same on the command
//!   line (`--allow`, `--deny`) and in a policy file ([`file`], TOML).
//! - [`Policy`]: a mode ([`Mode::Audit`] or [`Mode::Enforce`]) and rules,
//!   checked and compiled once. Deny rules win; with any allow rule,
//!   everything not allowed is denied; with deny rules only, everything
//!   else is allowed. IPv4-mapped IPv6 addresses are matched as IPv4.
//! - [`Matcher`]: decides flows as a run goes, with the names the scope's
//!   own lookups returned (a name rule allows those addresses for the rest
//!   of the run).
//! - [`table`]: the compiled form of the address rules, which the backends
//!   put in the kernel — one longest-prefix lookup per check, whatever the
//!   number of rules.
//! - [`Suggestion`]: a policy that allows exactly what a recorded run did.
//!
//! ```
//! use std::sync::Arc;
//! use flow_core::FlowKey;
//! use flow_policy::{Decision, Matcher, Policy};
//!
//! let policy = Policy::builder()
//!     .allow("udp://10.0.0.53:53")?
//!     .allow("tcp://pypi.org:443")?
//!     .deny("any://10.0.0.0/8")?
//!     .build()?
//!     .expect("rules were given");
//! let matcher = Matcher::new(Arc::new(policy));
//! let dns = FlowKey::udp("10.0.0.1:5000".parse()?, "10.0.0.53:53".parse()?);
//! assert_eq!(
//!     matcher.decide(&dns),
//!     Decision::Deny(flow_policy::RuleId::new(3)),
//!     "deny rules win, whatever their order"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod file;
mod matcher;
pub mod name;
mod policy;
pub mod rule;
mod suggest;
pub mod table;

pub use matcher::{Learned, LearnedAddress, MAX_LEARNED_ADDRESSES, Matcher};
pub use policy::{DEFAULT_RULE, MAX_RULES, Mode, Policy, PolicyBuilder, PolicyError, RuleId};
pub use rule::{Action, Dest, PortRange, Proto, Rule, RuleError};
pub use suggest::Suggestion;
pub use table::{Decision, Entry};
