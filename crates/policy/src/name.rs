//! Names in rules, and the names rules match.
//!
//! A name is compared as DNS does: case-insensitively, with or without its
//! trailing dot. `pypi.org` matches the name `pypi.org` only; the wildcard
//! `*.pythonhosted.org` matches every name that ends in
//! `.pythonhosted.org` (`files.pythonhosted.org`, `a.b.pythonhosted.org`),
//! not `pythonhosted.org` itself.

use std::collections::HashMap;

use crate::RuleId;

/// The longest name DNS carries, without its trailing dot.
const MAX_NAME: usize = 253;
/// The longest label.
const MAX_LABEL: usize = 63;

/// `text` as a rule names it: lowercase, without the trailing dot; or why
/// it is not a name.
///
/// ```
/// # use flow_policy::name::normalise;
/// assert_eq!(normalise("Files.PythonHosted.org."), Ok("files.pythonhosted.org".to_owned()));
/// assert!(normalise("a..b").is_err());
/// ```
///
/// # Errors
/// A description of what is wrong: an empty or too long label, a
/// character a name cannot hold, an all-digit last label (a mistyped
/// address, not a name).
pub fn normalise(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err("a name cannot be empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{} characters: a name has at most {MAX_NAME}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label (two dots in a row, or a leading dot)".to_owned());
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "the label {label:?} is longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{bad:?} cannot be part of a name (letters, digits, '-' and '_')"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("its last label is all digits: neither a name nor an IPv4 address".to_owned());
    }
    Ok(name)
}

/// The name rules of a policy, indexed for matching names as lookups
/// bring them.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameRules {
    exact: HashMap<Box<str>, Vec<RuleId>>,
    /// Keyed by the suffix with its leading dot (`.pythonhosted.org`).
    suffix: HashMap<Box<str>, Vec<RuleId>>,
}

impl NameRules {
    /// Adds rule `id` for the name `name`.
    pub(crate) fn exact(&mut self, name: &str, id: RuleId) {
        self.exact.entry(name.into()).or_default().push(id);
    }

    /// Adds rule `id` for names ending in `suffix` (leading dot included).
    pub(crate) fn suffix(&mut self, suffix: &str, id: RuleId) {
        self.suffix.entry(suffix.into()).or_default().push(id);
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffix.is_empty()
    }

    /// Pushes onto `out` the rules that match `name` (lowercase, without
    /// the trailing dot, as lookups are reported): a lookup per label.
    pub(crate) fn matching(&self, name: &str, out: &mut Vec<RuleId>) {
        if let Some(ids) = self.exact.get(name) {
            out.extend_from_slice(ids);
        }
        if self.suffix.is_empty() {
            return;
        }
        for (at, _) in name.match_indices('.') {
            if let Some(ids) = self.suffix.get(&name[at..]) {
                out.extend_from_slice(ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_names_below_the_suffix_only() {
        let mut rules = NameRules::default();
        let id = RuleId::new(1).unwrap();
        rules.suffix(".pythonhosted.org", id);
        let matched = |name: &str| {
            let mut out = Vec::new();
            rules.matching(name, &mut out);
            out
        };
        assert_eq!(matched("files.pythonhosted.org"), [id]);
        assert_eq!(matched("a.b.pythonhosted.org"), [id]);
        assert!(matched("pythonhosted.org").is_empty());
        assert!(matched("evilpythonhosted.org").is_empty());
    }

    #[test]
    fn names_are_checked() {
        assert!(
            normalise(&"a".repeat(64))
                .unwrap_err()
                .contains("longer than 63")
        );
        assert!(
            normalise(&"a.".repeat(128))
                .unwrap_err()
                .contains("at most 253")
        );
        assert!(normalise("a b.org").unwrap_err().contains("' '"));
        assert!(normalise(".").is_err());
        assert_eq!(normalise("_srv.x.org").unwrap(), "_srv.x.org");
    }
}
