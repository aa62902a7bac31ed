//! The policy file (`--policy FILE`), TOML:
//!
//! ```toml
//! mode = "enforce"          # or "audit" (the default); --mode overrides it
//! allow = [
//!   "udp://10.0.0.53:53",   # the resolver: DNS is a flow like any other
//!   "tcp://pypi.org:443",
//!   "tcp://*.pythonhosted.org:443",
//! ]
//! deny = ["any://169.254.169.254"]
//! ```
//!
//! Every key is optional; any other key is an error, as is a malformed
//! rule, each named with its line and column.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::{Action, Mode, PolicyError, Rule};

/// What a policy file holds.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PolicyFile {
    /// Its mode, when it says.
    pub mode: Option<Mode>,
    /// Its rules: the deny list, then the allow list, each in order.
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

/// Reads and parses the policy file at `path`.
///
/// # Errors
/// [`PolicyError::Read`] or [`PolicyError::File`].
pub fn read(path: &Path) -> Result<PolicyFile, PolicyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

/// Parses `text`, the file `path` (named in messages).
///
/// # Errors
/// [`PolicyError::File`], with the line and column of the fault.
///
/// ```
/// # use flow_policy::Policy;
/// let dir = std::env::temp_dir().join(format!("flow-policy-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let file = dir.join("policy.toml");
/// std::fs::write(&file, "allow = [\n  \"tcp://pypi.org:443\",\n  \"tcp://x:99999\",\n]\n")?;
/// let error = Policy::builder().file(&file).unwrap_err().to_string();
/// assert!(error.ends_with("line 3, column 3: rule \"tcp://x:99999\": \"99999\" is not a port: give a number from 0 to 65535, or a range such as 8000-8100"), "{error}");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse(path: &str, text: &str) -> Result<PolicyFile, PolicyError> {
    let at = |span: Option<Range<usize>>, message: String| {
        let (line, column) = span.map_or((1, 1), |span| line_and_column(text, span.start));
        PolicyError::File {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let file: File =
        toml::from_str(text).map_err(|error| at(error.span(), error.message().to_owned()))?;
    let mode = file
        .mode
        .map(|mode| {
            Mode::ALL
                .into_iter()
                .find(|known| known.name() == mode.get_ref())
                .ok_or_else(|| {
                    at(
                        Some(mode.span()),
                        format!(
                            "mode {:?}: expected \"audit\" or \"enforce\"",
                            mode.get_ref()
                        ),
                    )
                })
        })
        .transpose()?;
    let mut rules = Vec::with_capacity(file.deny.len() + file.allow.len());
    for (action, texts) in [(Action::Deny, file.deny), (Action::Allow, file.allow)] {
        for text in texts {
            let rule = Rule::parse(action, text.get_ref())
                .map_err(|error| at(Some(text.span()), error.to_string()))?;
            rules.push(rule);
        }
    }
    Ok(PolicyFile { mode, rules })
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_whole_file_reads() {
        let parsed = parse(
            "p.toml",
            "# comment\nmode = \"enforce\"\nallow = [\"tcp://pypi.org:443\", # why\n \"udp://10.0.0.53:53\"]\ndeny = [\"any://10.0.0.13\"]\n",
        )
        .unwrap();
        assert_eq!(parsed.mode, Some(Mode::Enforce));
        let texts: Vec<String> = parsed.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "any://10.0.0.13",
                "tcp://pypi.org:443",
                "udp://10.0.0.53:53"
            ]
        );
        assert_eq!(parsed.rules[0].action, Action::Deny);
        assert!(parse("p.toml", "").unwrap().rules.is_empty());
    }

    #[test]
    fn faults_are_named_with_line_and_column() {
        let unknown = error("mode = \"audit\"\nalow = []\n");
        assert!(
            unknown.starts_with("p.toml line 2, column 1: unknown field `alow`"),
            "{unknown}"
        );
        assert!(unknown.contains("`allow`"), "{unknown}");
        let mode = error("mode = \"block\"\n");
        assert_eq!(
            mode,
            "p.toml line 1, column 8: mode \"block\": expected \"audit\" or \"enforce\""
        );
        let syntax = error("allow = [\"tcp://x.org\"\n");
        assert!(syntax.starts_with("p.toml line "), "{syntax}");
        let typed = error("allow = \"tcp://x.org\"\n");
        assert!(typed.starts_with("p.toml line 1, column 9: "), "{typed}");
        let rule = error("deny = [\n\t\"tcp://é.org\"]\n");
        assert!(
            rule.starts_with("p.toml line 2, column 2: rule \"tcp://é.org\": the name"),
            "{rule}"
        );
    }
}
