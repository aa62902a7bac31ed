//! A policy: its mode and its rules, checked and compiled once.

use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;

use crate::file;
use crate::name::NameRules;
use crate::table::{self, Crowded, Decision, Entry, Prefixes};
use crate::{Action, Dest, Rule, RuleError};

/// Rules a policy holds at most.
pub const MAX_RULES: usize = 10_000;

/// What the rule field of a denial says when no rule denied the flow but
/// none allowed it.
pub const DEFAULT_RULE: &str = "default";

/// What a policy does to the flows it denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Every connection goes through; each one the policy would deny is
    /// reported (`"enforced": false`). The default.
    #[default]
    Audit,
    /// Denied connections fail at once (`EPERM`, a TCP reset, ICMP
    /// administratively prohibited) and are reported (`"enforced": true`).
    Enforce,
}

impl Mode {
    /// Every mode, in declaration order.
    pub const ALL: [Self; 2] = [Self::Audit, Self::Enforce];

    /// `audit` or `enforce`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A rule's number in its policy, from 1, in the order written (command
/// line first, then the file; deny and allow rules numbered together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(NonZeroU16);

impl RuleId {
    /// The rule numbered `id`, if `id` is not 0.
    #[must_use]
    pub fn new(id: u16) -> Option<Self> {
        NonZeroU16::new(id).map(Self)
    }

    /// Its number.
    #[must_use]
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

/// Why a policy cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rule given on the command line is malformed.
    #[error("--{action} {source}")]
    Rule {
        /// `allow` or `deny`.
        action: &'static str,
        /// What is wrong with it.
        source: RuleError,
    },
    /// The policy file is malformed: a TOML error, an unknown key, a bad
    /// mode or rule.
    #[error("{path} line {line}, column {column}: {message}")]
    File {
        /// The file.
        path: String,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The policy file cannot be read.
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// More rules than [`MAX_RULES`].
    #[error("{0} rules: a policy holds at most {MAX_RULES}")]
    TooManyRules(usize),
    /// More rules apply to one address prefix than the kernel's entry holds.
    #[error(
        "{} rules apply to {prefix} ({rules}): at most {} may apply to one address (the size of the kernel's entry); merge port ranges or drop some",
        count,
        table::MAX_ENTRIES
    )]
    Crowded {
        /// The prefix.
        prefix: IpNet,
        /// How many rules apply to it.
        count: usize,
        /// The first of them, as written.
        rules: String,
    },
    /// More rules for anywhere (`*`) than [`table::MAX_ANYWHERE`].
    #[error("{0} rules for anywhere (*): at most {max}", max = table::MAX_ANYWHERE)]
    TooManyAnywhere(usize),
}

/// A checked, compiled policy.
///
/// ```
/// use flow_policy::{Decision, Mode, Policy};
/// let policy = Policy::builder()
///     .allow("tcp://10.0.0.0/8:443")?
///     .deny("any://10.0.0.13")?
///     .mode(Mode::Enforce)
///     .build()?
///     .expect("rules were given");
/// assert_eq!(policy.mode(), Mode::Enforce);
/// assert!(policy.decide(6, "10.1.2.3".parse()?, 443, &[]).allows());
/// let Decision::Deny(rule) = policy.decide(6, "10.0.0.13".parse()?, 443, &[]) else { panic!() };
/// assert_eq!(&*policy.rule_text(rule), "any://10.0.0.13");
/// assert_eq!(&*policy.rule_text(None), "default");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    rules: Vec<Rule>,
    texts: Vec<Arc<str>>,
    default_text: Arc<str>,
    prefixes: Prefixes,
    names: NameRules,
    default_deny: bool,
}

impl Policy {
    /// A policy builder: rules from the command line and a file.
    #[must_use]
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A policy of `rules` (numbered in this order) in `mode`.
    ///
    /// # Errors
    /// Too many rules, or too many applying to one prefix (see
    /// [`PolicyError`]).
    pub fn new(mode: Mode, rules: Vec<Rule>) -> Result<Self, PolicyError> {
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules(rules.len()));
        }
        let mut names = NameRules::default();
        let mut addressed = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let id = RuleId::new(u16::try_from(index + 1).unwrap_or(u16::MAX))
                .ok_or(PolicyError::TooManyRules(rules.len()))?;
            let entry = Entry {
                action: rule.action,
                rule: id,
                proto: rule.proto,
                ports: rule.ports,
            };
            match &rule.dest {
                Dest::Anywhere => addressed.push((None, entry)),
                Dest::Net(net) => addressed.push((Some(*net), entry)),
                Dest::Name(name) => names.exact(name, id),
                Dest::Suffix(suffix) => names.suffix(suffix, id),
            }
        }
        let prefixes =
            Prefixes::compile(addressed).map_err(|crowded| crowded_error(&rules, &crowded))?;
        if prefixes.anywhere().len() > table::MAX_ANYWHERE {
            return Err(PolicyError::TooManyAnywhere(prefixes.anywhere().len()));
        }
        Ok(Self {
            mode,
            texts: rules.iter().map(|rule| rule.to_string().into()).collect(),
            default_deny: rules.iter().any(|rule| rule.action == Action::Allow),
            rules,
            default_text: DEFAULT_RULE.into(),
            prefixes,
            names,
        })
    }

    /// Audit or enforce.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules, in their numbering order.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule numbered `id`.
    #[must_use]
    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.rules.get(usize::from(id.get()) - 1)
    }

    /// The text a denial's `rule` field shows: the rule's canonical text,
    /// or `default` for `None` (or a number no rule has).
    #[must_use]
    pub fn rule_text(&self, id: Option<RuleId>) -> Arc<str> {
        id.and_then(|id| self.texts.get(usize::from(id.get()) - 1))
            .unwrap_or(&self.default_text)
            .clone()
    }

    /// Whether what no rule allows is denied (the policy has allow rules).
    #[must_use]
    pub fn default_deny(&self) -> bool {
        self.default_deny
    }

    /// Whether some rule names its destination by name (then the scope's
    /// lookups decide what those rules allow or deny).
    #[must_use]
    pub fn has_name_rules(&self) -> bool {
        !self.names.is_empty()
    }

    /// Why a backend without a resolver of its own (nflog) cannot enforce
    /// this policy, if it cannot: its name and wildcard rules (a name's
    /// addresses are only known from the scope's own lookups, and allowing
    /// them after userspace reads the answer races the workload, which may
    /// connect first: a false denial). The eBPF backend enforces them
    /// through its resolver.
    #[must_use]
    pub fn enforce_refusal(&self) -> Option<String> {
        let names: Vec<String> = self
            .rules
            .iter()
            .filter(|rule| rule.dest.is_name())
            .map(ToString::to_string)
            .collect();
        (!names.is_empty()).then(|| {
            format!(
                "it enforces address rules only; name rules ({}) are enforced by the eBPF \
                 backend, whose resolver allows a name's answers before the workload has them \
                 (allowing them after the lookup would race the workload): use --backend ebpf, \
                 give addresses, or use --mode audit",
                names.join(", ")
            )
        })
    }

    /// The compiled address rules.
    #[must_use]
    pub fn prefixes(&self) -> &Prefixes {
        &self.prefixes
    }

    /// The name rules that match `name` (lowercase, no trailing dot),
    /// pushed onto `out`.
    pub fn matching_names(&self, name: &str, out: &mut Vec<RuleId>) {
        self.names.matching(name, out);
    }

    /// The entry of rule `id`, as a check needs it.
    #[must_use]
    pub fn entry(&self, id: RuleId) -> Option<Entry> {
        self.rule(id).map(|rule| Entry {
            action: rule.action,
            rule: id,
            proto: rule.proto,
            ports: rule.ports,
        })
    }

    /// Decides a flow of `protocol` to `address` and `port`, with `named`
    /// the entries of the name rules whose lookups returned `address`
    /// (see [`crate::Matcher`]).
    #[must_use]
    pub fn decide(
        &self,
        protocol: u8,
        address: std::net::IpAddr,
        port: u16,
        named: &[Entry],
    ) -> Decision {
        let entries = self
            .prefixes
            .anywhere()
            .iter()
            .chain(self.prefixes.lookup(address))
            .chain(named);
        table::decide(entries, self.default_deny, protocol, port)
    }
}

fn crowded_error(rules: &[Rule], crowded: &[Crowded]) -> PolicyError {
    let first = &crowded[0];
    let mut listed: Vec<String> = first
        .rules
        .iter()
        .take(4)
        .filter_map(|id| rules.get(usize::from(id.get()) - 1))
        .map(|rule| format!("{} {rule}", rule.action.name()))
        .collect();
    if first.rules.len() > 4 {
        listed.push("…".to_owned());
    }
    PolicyError::Crowded {
        prefix: first.prefix,
        count: first.rules.len(),
        rules: listed.join(", "),
    }
}

/// Gathers a policy's rules from the command line (`--allow`, `--deny`)
/// and a file (`--policy`), and its mode (`--mode` over the file's).
#[derive(Debug, Default)]
pub struct PolicyBuilder {
    mode: Option<Mode>,
    file_mode: Option<Mode>,
    rules: Vec<Rule>,
    file_rules: Vec<Rule>,
    any: bool,
}

impl PolicyBuilder {
    /// An allow rule.
    ///
    /// # Errors
    /// [`PolicyError::Rule`] when it is malformed.
    pub fn allow(self, text: &str) -> Result<Self, PolicyError> {
        self.rule(Action::Allow, text)
    }

    /// A deny rule.
    ///
    /// # Errors
    /// [`PolicyError::Rule`] when it is malformed.
    pub fn deny(self, text: &str) -> Result<Self, PolicyError> {
        self.rule(Action::Deny, text)
    }

    fn rule(mut self, action: Action, text: &str) -> Result<Self, PolicyError> {
        let rule = Rule::parse(action, text).map_err(|source| PolicyError::Rule {
            action: action.name(),
            source,
        })?;
        self.rules.push(rule);
        self.any = true;
        Ok(self)
    }

    /// The mode, over the file's (default: the file's, else audit).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The rules and mode of the policy file at `path` (numbered after
    /// the command line's).
    ///
    /// # Errors
    /// [`PolicyError::Read`] or [`PolicyError::File`].
    pub fn file(mut self, path: &Path) -> Result<Self, PolicyError> {
        let parsed = file::read(path)?;
        self.file_mode = parsed.mode;
        self.file_rules = parsed.rules;
        self.any = true;
        Ok(self)
    }

    /// The policy, or `None` when neither a rule nor a file was given.
    ///
    /// # Errors
    /// See [`Policy::new`].
    pub fn build(mut self) -> Result<Option<Policy>, PolicyError> {
        if !self.any {
            return Ok(None);
        }
        let mode = self.mode.or(self.file_mode).unwrap_or_default();
        self.rules.append(&mut self.file_rules);
        Policy::new(mode, self.rules).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_is_no_policy() {
        assert!(Policy::builder().build().unwrap().is_none());
        assert!(
            Policy::builder()
                .mode(Mode::Enforce)
                .build()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_bad_command_line_rule_names_its_flag() {
        let error = Policy::builder().deny("tcp://x.org:0-").unwrap_err();
        assert_eq!(
            error.to_string(),
            "--deny rule \"tcp://x.org:0-\": \"\" is not a port: give a number from 0 to 65535, or a range such as 8000-8100"
        );
    }

    #[test]
    fn name_rules_cannot_be_enforced_and_are_named() {
        let policy = |rules: &[&str]| {
            let mut builder = Policy::builder();
            for rule in rules {
                builder = builder.allow(rule).unwrap();
            }
            builder.build().unwrap().unwrap()
        };
        let why = policy(&["tcp://pypi.org:443", "udp://10.0.0.53:53"])
            .enforce_refusal()
            .unwrap();
        assert!(why.contains("name rules (tcp://pypi.org:443)"), "{why}");
        assert_eq!(policy(&["tcp://10.0.0.1"]).enforce_refusal(), None);
    }

    #[test]
    fn deny_rules_alone_allow_the_rest() {
        let policy = Policy::builder()
            .deny("tcp://*:25")
            .unwrap()
            .build()
            .unwrap()
            .unwrap();
        assert!(!policy.default_deny());
        assert!(
            policy
                .decide(6, "192.0.2.1".parse().unwrap(), 443, &[])
                .allows()
        );
        assert_eq!(
            policy.decide(6, "192.0.2.1".parse().unwrap(), 25, &[]),
            Decision::Deny(RuleId::new(1))
        );
    }

    #[test]
    fn too_many_rules_for_anywhere_are_refused() {
        let mut builder = Policy::builder();
        for port in 0..=table::MAX_ANYWHERE {
            builder = builder.allow(&format!("tcp://*:{port}")).unwrap();
        }
        assert!(matches!(
            builder.build().unwrap_err(),
            PolicyError::TooManyAnywhere(65)
        ));
    }

    #[test]
    fn a_crowded_prefix_is_named_with_its_rules() {
        let mut builder = Policy::builder();
        for port in 0..=table::MAX_ENTRIES {
            builder = builder.allow(&format!("tcp://10.0.0.0/8:{port}")).unwrap();
        }
        let error = builder.build().unwrap_err().to_string();
        assert!(
            error.starts_with(
                "17 rules apply to 10.0.0.0/8 (allow tcp://10.0.0.0/8:0, allow tcp://10.0.0.0/8:1,"
            ),
            "{error}"
        );
    }
}
