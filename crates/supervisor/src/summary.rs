//! The per-destination summary at the end of a run: for each protocol,
//! address and port the workload reached, how many connections, packets
//! and bytes, and when it was first and last seen.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_supervisor::summary::Destinations;
//!
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?);
//! let mut destinations = Destinations::default();
//! destinations.record(&FlowEvent::opened(key, 1_000_000_000));
//! destinations.record(&FlowEvent::closed(key, 10, 2_000, 2_000_000_000));
//! let table = destinations.to_text();
//! assert!(table.contains("tcp    10.0.0.2"), "{table}");
//! assert!(destinations.to_json().contains(r#""connections":1"#));
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use flow_core::display::Seconds;
use flow_core::protocol;
use flow_core::{FlowEvent, FlowEventKind};
use serde::Serialize;

/// Destinations tracked at most; the rest are counted together.
pub const MAX_DESTINATIONS: usize = 10_000;

/// What was seen of one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    /// Flows opened to it.
    pub connections: u64,
    /// `Denied` events to it: packets a logging drop rule dropped (nflog).
    pub denied: u64,
    /// Packets of its closed flows, both directions.
    pub packets: u64,
    /// IP-level bytes of its closed flows, both directions.
    pub bytes: u64,
    /// First event, CLOCK_MONOTONIC nanoseconds.
    pub first_seen_ns: u64,
    /// Last event, CLOCK_MONOTONIC nanoseconds.
    pub last_seen_ns: u64,
}

/// A destination: protocol, address, port (ICMP: `type << 8 | code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// IANA protocol number.
    pub protocol: u8,
    /// The responder's address.
    pub address: IpAddr,
    /// The responder's port.
    pub port: u16,
}

/// Per-destination totals of a stream of events, bounded by
/// [`MAX_DESTINATIONS`].
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    // A hash map: one lookup per event written, on the output's hot path;
    // sorted only when shown.
    by_destination: HashMap<Destination, DestinationStats>,
    /// Events about destinations beyond the bound.
    pub untracked_events: u64,
}

impl Destinations {
    /// Counts one event.
    pub fn record(&mut self, event: &FlowEvent) {
        let destination = Destination {
            protocol: event.key.protocol,
            address: event.key.dst_addr,
            port: event.key.dst_port,
        };
        if !self.by_destination.contains_key(&destination)
            && self.by_destination.len() >= MAX_DESTINATIONS
        {
            self.untracked_events += 1;
            return;
        }
        let stats = self
            .by_destination
            .entry(destination)
            .or_insert(DestinationStats {
                first_seen_ns: event.timestamp_ns,
                ..DestinationStats::default()
            });
        stats.first_seen_ns = stats.first_seen_ns.min(event.timestamp_ns);
        stats.last_seen_ns = stats.last_seen_ns.max(event.timestamp_ns);
        match event.kind {
            FlowEventKind::Opened => stats.connections += 1,
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            } => {
                // Counters read back from a file may be anything.
                stats.packets = stats.packets.saturating_add(pkt_count);
                stats.bytes = stats.bytes.saturating_add(byte_count);
            }
            FlowEventKind::Denied => stats.denied += 1,
            _ => {}
        }
    }

    /// The destinations seen, in order of protocol, address and port.
    pub fn iter(&self) -> impl Iterator<Item = (&Destination, &DestinationStats)> {
        let mut sorted: Vec<_> = self.by_destination.iter().collect();
        sorted.sort_unstable_by_key(|(destination, _)| **destination);
        sorted.into_iter()
    }

    /// Whether nothing was seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_destination.is_empty()
    }

    /// An aligned table, one line per destination, times in seconds.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{:<6} {:<39} {:>5} {:>6} {:>6} {:>9} {:>12} {:>17} {:>17}\n",
            "proto",
            "address",
            "port",
            "conns",
            "denied",
            "packets",
            "bytes",
            "first seen",
            "last seen"
        );
        for (destination, stats) in self.iter() {
            let _ = writeln!(
                text,
                "{:<6} {:<39} {:>5} {:>6} {:>6} {:>9} {:>12} {:>17} {:>17}",
                protocol::Display(destination.protocol).to_string(),
                destination.address.to_string(),
                destination.port,
                stats.connections,
                stats.denied,
                stats.packets,
                stats.bytes,
                seconds(stats.first_seen_ns),
                seconds(stats.last_seen_ns),
            );
        }
        if self.untracked_events > 0 {
            let _ = writeln!(
                text,
                "({} more events to destinations beyond the first {MAX_DESTINATIONS})",
                self.untracked_events
            );
        }
        text
    }

    /// One JSON object: `{"destinations":[{"proto":…,"address":…,"port":…,
    /// "connections":…,…}],"untracked_events":N}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Row<'a> {
            proto: String,
            address: IpAddr,
            port: u16,
            #[serde(flatten)]
            stats: &'a DestinationStats,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            destinations: Vec<Row<'a>>,
            untracked_events: u64,
        }
        let summary = Summary {
            destinations: self
                .iter()
                .map(|(destination, stats)| Row {
                    proto: protocol::Display(destination.protocol).to_string(),
                    address: destination.address,
                    port: destination.port,
                    stats,
                })
                .collect(),
            untracked_events: self.untracked_events,
        };
        serde_json::to_string(&summary).expect("plain data serialises")
    }
}

/// Nanoseconds as seconds with six decimals.
fn seconds(ns: u64) -> String {
    format!("{:.6}s", Seconds(ns))
}
