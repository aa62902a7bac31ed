//! A policy suggested from a recorded run (`flowtrack policy suggest`): it
//! allows exactly what the run's flows did.
//!
//! - One rule per protocol, destination and port the scope connected to
//!   (flows it started; accepted connections are not the policy's).
//! - The destination by name where one is known — the `host` the scope
//!   looked it up as, else the TLS server name (`sni`) — else by address.
//!   A name rule allows what the scope's lookups of that name return, so
//!   a name known only from `sni` needs its lookup in the enforced run.
//! - Loopback (`127.0.0.0/8`, `[::1]`) as one rule per family, any
//!   protocol and port: a workload's own local services.
//! - A comment per rule: the connections seen, and the addresses.
//! - A run that connected nowhere gives `deny = ["any://*"]`: an empty
//!   allow list would allow everything.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_core::record::FlowRecord;
//! use flow_policy::Suggestion;
//!
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "151.101.0.223:443".parse()?);
//! let mut suggestion = Suggestion::default();
//! suggestion.record(&FlowRecord::event("ebpf", FlowEvent::opened(key, 1).named("pypi.org")));
//! let file = suggestion.to_toml("run.jsonl");
//! assert!(file.contains("\"tcp://pypi.org:443\",  # 1 connection (151.101.0.223)"), "{file}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowEvent, FlowEventKind, FlowKey};
use ipnet::IpNet;

use crate::rule::{ICMP, ICMPV6, TCP, UDP};
use crate::{Dest, PortRange, Proto, name};

/// Addresses listed in a rule's comment at most.
const LISTED_ADDRESSES: usize = 4;

/// The rule a flow asks for: protocol, destination, port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    /// Loopback first, then names, then addresses.
    order: u8,
    proto: Proto,
    dest: Dest,
    port: Option<u16>,
}

impl Wanted {
    fn text(&self) -> String {
        let rule = crate::Rule {
            action: crate::Action::Allow,
            proto: self.proto,
            dest: self.dest.clone(),
            ports: self.port.map(|port| PortRange {
                first: port,
                last: port,
            }),
        };
        rule.to_string()
    }
}

/// What was seen of one rule's flows.
#[derive(Debug, Clone, Default)]
struct Seen {
    connections: u64,
    addresses: BTreeSet<IpAddr>,
}

/// A flow of the recording, until its rule is known.
#[derive(Debug, Clone)]
struct Flow {
    key: FlowKey,
    host: Option<Arc<str>>,
    sni: Option<Arc<str>>,
}

/// The flows of a recorded run, gathered into the rules that allow them
/// (see the [module](self) documentation).
#[derive(Debug, Clone, Default)]
pub struct Suggestion {
    /// Flows opened and not closed yet, by key.
    open: HashMap<FlowKey, Flow>,
    /// Flows done, in the order they ended.
    done: Vec<Flow>,
}

impl Suggestion {
    /// Takes one line of the recording. Flows count once, from their
    /// `opened` line (or their `closed` line, when the recording started
    /// after they opened); a `closed` line adds the server name.
    pub fn record(&mut self, record: &FlowRecord<'_>) {
        let RecordItem::Event(event) = &record.item else {
            return;
        };
        if event.inbound {
            return;
        }
        match &event.kind {
            FlowEventKind::Opened => {
                if let Some(earlier) = self.open.insert(event.key, Flow::of(event)) {
                    self.done.push(earlier);
                }
            }
            FlowEventKind::Closed { .. } => {
                let mut flow = self
                    .open
                    .remove(&event.key)
                    .unwrap_or_else(|| Flow::of(event));
                flow.host = flow.host.or_else(|| event.host.clone());
                flow.sni = flow.sni.or_else(|| event.sni.clone());
                self.done.push(flow);
            }
            _ => {}
        }
    }

    /// The rules, each with what was seen of its flows.
    fn rules(&self) -> BTreeMap<Wanted, Seen> {
        let mut rules: BTreeMap<Wanted, Seen> = BTreeMap::new();
        for flow in self.done.iter().chain(self.open.values()) {
            let seen = rules.entry(flow.wanted()).or_default();
            seen.connections += 1;
            seen.addresses.insert(flow.key.dst_addr.to_canonical());
        }
        rules
    }

    /// The policy file (TOML, enforce mode), naming the recording `source`
    /// in its heading.
    #[must_use]
    pub fn to_toml(&self, source: &str) -> String {
        let rules = self.rules();
        let connections: u64 = rules.values().map(|seen| seen.connections).sum();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# Suggested by flowtrack from {}: what the recorded run connected to\n\
             # ({connections} {} to {} {}). A name is allowed through the scope's own\n\
             # lookups of it, so the rule that allows the resolver (port 53) stays.",
            source.replace('\n', " "),
            plural(connections, "connection", "connections"),
            rules.len(),
            plural(rules.len() as u64, "destination", "destinations"),
        );
        text.push_str("mode = \"enforce\"\n");
        if rules.is_empty() {
            text.push_str("deny = [\"any://*\"]  # the run connected nowhere\n");
            return text;
        }
        text.push_str("allow = [\n");
        for (wanted, seen) in &rules {
            let _ = write!(
                text,
                "    \"{}\",  # {} {}",
                wanted.text(),
                seen.connections,
                plural(seen.connections, "connection", "connections")
            );
            if wanted.dest.is_name() {
                let listed: Vec<String> = seen
                    .addresses
                    .iter()
                    .take(LISTED_ADDRESSES)
                    .map(ToString::to_string)
                    .collect();
                let more = seen.addresses.len().saturating_sub(LISTED_ADDRESSES);
                let _ = write!(text, " ({}", listed.join(", "));
                if more > 0 {
                    let _ = write!(text, ", {more} more");
                }
                text.push(')');
            }
            text.push('\n');
        }
        text.push_str("]\n");
        text
    }
}

fn plural(count: u64, one: &'static str, many: &'static str) -> &'static str {
    if count == 1 { one } else { many }
}

impl Flow {
    fn of(event: &FlowEvent) -> Self {
        Self {
            key: event.key,
            host: event.host.clone(),
            sni: event.sni.clone(),
        }
    }

    /// The rule that allows this flow.
    fn wanted(&self) -> Wanted {
        let address = self.key.dst_addr.to_canonical();
        let (proto, port) = match self.key.protocol {
            TCP => (Proto::Tcp, Some(self.key.dst_port)),
            UDP => (Proto::Udp, Some(self.key.dst_port)),
            ICMP | ICMPV6 => (Proto::Icmp, None),
            _ => (Proto::Any, None),
        };
        if address.is_loopback() {
            let net = match address {
                IpAddr::V4(_) => "127.0.0.0/8",
                IpAddr::V6(_) => "::1/128",
            };
            return Wanted {
                order: 0,
                proto: Proto::Any,
                dest: Dest::Net(net.parse::<IpNet>().unwrap_or_default()),
                port: None,
            };
        }
        let named = [&self.host, &self.sni]
            .into_iter()
            .flatten()
            .find_map(|name| name::normalise(name).ok());
        let (order, dest) = match named {
            Some(name) => (1, Dest::Name(name.into())),
            None => (2, Dest::Net(IpNet::from(address))),
        };
        Wanted {
            order,
            proto,
            dest,
            port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, Policy};

    fn opened(src: &str, dst: &str) -> FlowEvent {
        FlowEvent::opened(FlowKey::tcp(src.parse().unwrap(), dst.parse().unwrap()), 1)
    }

    fn record(event: FlowEvent) -> FlowRecord<'static> {
        FlowRecord::event("ebpf", event)
    }

    fn suggested(events: Vec<FlowEvent>) -> String {
        let mut suggestion = Suggestion::default();
        for event in events {
            suggestion.record(&record(event));
        }
        suggestion.to_toml("run.jsonl")
    }

    #[test]
    fn names_first_then_addresses_loopback_as_one_rule() {
        let resolver = FlowEvent::opened(
            FlowKey::udp(
                "10.0.0.1:5000".parse().unwrap(),
                "10.0.0.53:53".parse().unwrap(),
            ),
            1,
        );
        let hello = opened("10.0.0.1:40001", "192.0.2.9:443");
        let hello_closed = FlowEvent::closed(hello.key, 5, 500, 2).with_sni("secure.example");
        let file = suggested(vec![
            resolver,
            opened("10.0.0.1:40000", "151.101.0.223:443").named("PyPI.org"),
            opened("10.0.0.1:40002", "151.101.64.223:443").named("pypi.org"),
            hello,
            hello_closed,
            opened("127.0.0.1:40003", "127.0.0.2:8080"),
            opened("[::1]:40004", "[::1]:8080"),
            opened("10.0.0.1:40005", "198.51.100.7:80").inbound(true),
        ]);
        let rules: Vec<&str> = file
            .lines()
            .filter(|line| line.starts_with("    \""))
            .collect();
        assert_eq!(
            rules,
            [
                "    \"any://127.0.0.0/8\",  # 1 connection",
                "    \"any://[::1]\",  # 1 connection",
                "    \"tcp://pypi.org:443\",  # 2 connections (151.101.0.223, 151.101.64.223)",
                "    \"tcp://secure.example:443\",  # 1 connection (192.0.2.9)",
                "    \"udp://10.0.0.53:53\",  # 1 connection",
            ],
            "{file}"
        );
    }

    #[test]
    fn the_file_parses_back_in_enforce_mode() {
        let file = suggested(vec![opened("10.0.0.1:1", "[2001:db8::1]:443")]);
        let dir = std::env::temp_dir().join(format!("flow-policy-suggest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, &file).unwrap();
        let policy = Policy::builder()
            .file(&path)
            .unwrap()
            .build()
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(policy.mode(), Mode::Enforce);
        assert!(
            policy
                .decide(6, "2001:db8::1".parse().unwrap(), 443, &[])
                .allows()
        );
        assert!(
            !policy
                .decide(6, "2001:db8::2".parse().unwrap(), 443, &[])
                .allows()
        );
    }

    #[test]
    fn a_run_that_connected_nowhere_denies_everything() {
        let file = suggested(Vec::new());
        assert!(file.contains("deny = [\"any://*\"]"), "{file}");
    }
}
