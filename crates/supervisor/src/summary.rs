//! The summaries at the end of a run: for each destination the workload
//! reached (protocol, address, port, and the names it was reached under),
//! or for each program that made connections, how many connections,
//! packets and bytes, and when it was first and last seen.
//!
//! ```
//! use std::sync::Arc;
//! use flow_core::process::Process;
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_supervisor::summary::{Destinations, Programs};
//!
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?);
//! let curl = Arc::new(Process::new(7).with_comm("curl").with_exe("/usr/bin/curl").with_uid(1000));
//! let mut destinations = Destinations::default();
//! let mut programs = Programs::default();
//! for event in [
//!     FlowEvent::opened(key, 1_000_000_000).named("pypi.org").by(Arc::clone(&curl)),
//!     FlowEvent::closed(key, 10, 2_000, 2_000_000_000).named("pypi.org").by(curl),
//! ] {
//!     destinations.record(&event);
//!     programs.record(&event);
//! }
//! let table = destinations.to_text();
//! assert!(table.contains("tcp    10.0.0.2"), "{table}");
//! assert!(table.contains("pypi.org"), "{table}");
//! assert!(destinations.to_json().contains(r#""connections":1"#));
//! assert!(programs.to_text().contains("/usr/bin/curl"));
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use flow_core::arc_memo::ArcMemo;
use flow_core::display::Seconds;
use flow_core::process::Process;
use flow_core::protocol;
use flow_core::{FlowEvent, FlowEventKind};
use hashbrown::Equivalent;
use hashbrown::hash_map::EntryRef;
use serde::Serialize;

/// Rows a summary tracks at most; events of the rest are counted together.
pub const MAX_DESTINATIONS: usize = 10_000;

/// Names kept for one destination, and pids for one program (their
/// counts go on).
const MAX_LISTED: usize = 8;

/// What was seen of one destination, or of one program's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    /// Flows opened.
    pub connections: u64,
    /// `Denied` events.
    pub denied: u64,
    /// Packets of the closed flows, both directions.
    pub packets: u64,
    /// IP-level bytes of the closed flows, both directions.
    pub bytes: u64,
    /// First event, CLOCK_MONOTONIC nanoseconds.
    pub first_seen_ns: u64,
    /// Last event, CLOCK_MONOTONIC nanoseconds.
    pub last_seen_ns: u64,
}

impl DestinationStats {
    fn new(timestamp_ns: u64) -> Self {
        Self {
            first_seen_ns: timestamp_ns,
            ..Self::default()
        }
    }

    /// Counts one flow event (lookups are not connections: not counted).
    fn add(&mut self, event: &FlowEvent) {
        self.first_seen_ns = self.first_seen_ns.min(event.timestamp_ns);
        self.last_seen_ns = self.last_seen_ns.max(event.timestamp_ns);
        match event.kind {
            FlowEventKind::Opened => self.connections += 1,
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            } => {
                // Counters read back from a file may be anything.
                self.packets = self.packets.saturating_add(pkt_count);
                self.bytes = self.bytes.saturating_add(byte_count);
            }
            FlowEventKind::Denied { .. } => self.denied += 1,
            _ => {}
        }
    }
}

/// A destination: protocol, address, port (ICMP: `type << 8 | code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    /// IANA protocol number.
    pub protocol: u8,
    /// The responder's address.
    pub address: IpAddr,
    /// The responder's port.
    pub port: u16,
}

/// By hand: one or two writes to the hasher instead of the derived five
/// (the summaries hash a destination per event). Equal destinations write
/// the same, as `Eq` requires.
impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let protocol_and_port = u64::from(self.protocol) << 16 | u64::from(self.port);
        match self.address {
            IpAddr::V4(ip) => state.write_u64(protocol_and_port << 32 | u64::from(ip.to_bits())),
            IpAddr::V6(ip) => {
                state.write_u128(ip.to_bits());
                state.write_u64(protocol_and_port);
            }
        }
    }
}

/// Up to [`MAX_LISTED`] distinct values, in the order first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
struct Listed<T>(Vec<T>);

impl<T: PartialEq + Clone> Listed<T> {
    /// Adds `value` (a clone of it) unless it is listed or the list is
    /// full: most events repeat a listed value, and cloning a name is an
    /// atomic increment.
    fn add(&mut self, value: &T) {
        if self.0.len() < MAX_LISTED && !self.0.contains(value) {
            self.0.push(value.clone());
        }
    }
}

impl Listed<Arc<str>> {
    /// [`Listed::add`] for a name: most events carry one of the names
    /// listed, behind the same `Arc` (the enricher shares them), found
    /// without comparing the text of the others.
    fn add_name(&mut self, name: &Arc<str>) {
        if !self.0.iter().any(|listed| Arc::ptr_eq(listed, name)) {
            self.add(name);
        }
    }
}

/// Rows of `K`, bounded by [`MAX_DESTINATIONS`]: a hash map, one lookup
/// per event on the output's hot path, sorted only when shown.
#[derive(Debug, Clone)]
struct Rows<K, V> {
    /// Each key's row in `values`.
    ///
    /// foldhash: the keys are the run's own, not an attacker's choosing
    /// to collide (and the rows are bounded), so a fast hash will do.
    /// hashbrown's map rather than std's: it looks a row up by a borrowed
    /// form of its key ([`Equivalent`]), so that an event's key is made
    /// (an `Arc` cloned) only for a new row.
    index: hashbrown::HashMap<K, usize, foldhash::fast::RandomState>,
    /// The rows, in the order they were made: a row's number stays its
    /// own, so that a caller can remember it ([`Programs`] does, by
    /// process).
    values: Vec<(DestinationStats, V)>,
    untracked_events: u64,
}

impl<K, V> Default for Rows<K, V> {
    fn default() -> Self {
        Self {
            index: hashbrown::HashMap::default(),
            values: Vec::new(),
            untracked_events: 0,
        }
    }
}

impl<K: Hash + Eq + Ord, V: Default> Rows<K, V> {
    /// Counts `event` in the row of `key` (made with `owned` for a new
    /// row); the row's extra value, unless the row is beyond the bound.
    fn record<Q: Hash + Equivalent<K> + ?Sized>(
        &mut self,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        event: &FlowEvent,
    ) -> Option<&mut V> {
        let row = self.row_of(key, owned, event)?;
        Some(self.record_in(row, event))
    }

    /// The number of the row of `key`, made (with `owned`) for `event`
    /// when there is none; `None`, the event counted as untracked, when
    /// the rows are at their bound.
    fn row_of<Q: Hash + Equivalent<K> + ?Sized>(
        &mut self,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        event: &FlowEvent,
    ) -> Option<usize> {
        let full = self.values.len() >= MAX_DESTINATIONS;
        match self.index.entry_ref(key) {
            EntryRef::Occupied(row) => Some(*row.get()),
            EntryRef::Vacant(row) if !full => {
                let number = self.values.len();
                row.insert_with_key(owned(key), number);
                self.values
                    .push((DestinationStats::new(event.timestamp_ns), V::default()));
                Some(number)
            }
            EntryRef::Vacant(_) => {
                self.untracked_events += 1;
                None
            }
        }
    }

    /// Counts `event` in row number `row` (from [`Rows::row_of`]); the
    /// row's extra value.
    fn record_in(&mut self, row: usize, event: &FlowEvent) -> &mut V {
        let (stats, extra) = &mut self.values[row];
        stats.add(event);
        extra
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn sorted(&self) -> Vec<(&K, &DestinationStats, &V)> {
        let mut sorted: Vec<_> = self
            .index
            .iter()
            .map(|(key, &row)| {
                let (stats, extra) = &self.values[row];
                (key, stats, extra)
            })
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted
    }
}

/// Whether `event` counts in a summary: flow events do, lookups do not.
fn counts(event: &FlowEvent) -> bool {
    !matches!(event.kind, FlowEventKind::Dns(_))
}

/// Per-destination totals of a stream of events, with the names each
/// destination was reached under, bounded by [`MAX_DESTINATIONS`].
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    rows: Rows<Destination, Listed<Arc<str>>>,
}

impl Destinations {
    /// Counts one event.
    pub fn record(&mut self, event: &FlowEvent) {
        if !counts(event) {
            return;
        }
        let destination = Destination {
            protocol: event.key.protocol,
            address: event.key.dst_addr,
            port: event.key.dst_port,
        };
        if let Some(names) = self.rows.record(&destination, |key| *key, event) {
            for name in [&event.host, &event.sni].into_iter().flatten() {
                names.add_name(name);
            }
        }
    }

    /// The destinations seen, in order of protocol, address and port.
    pub fn iter(&self) -> impl Iterator<Item = (&Destination, &DestinationStats)> {
        self.rows
            .sorted()
            .into_iter()
            .map(|(destination, stats, _)| (destination, stats))
    }

    /// Whether nothing was seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Events about destinations beyond the bound.
    #[must_use]
    pub fn untracked_events(&self) -> u64 {
        self.rows.untracked_events
    }

    /// An aligned table, one line per destination, times in seconds, the
    /// names last.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{:<6} {:<39} {:>5} {:>6} {:>6} {:>9} {:>12} {:>17} {:>17}  names\n",
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
        for (destination, stats, names) in self.rows.sorted() {
            let _ = write!(
                text,
                "{:<6} {:<39} {:>5} ",
                protocol::Display(destination.protocol).to_string(),
                destination.address.to_string(),
                destination.port,
            );
            write_stats(&mut text, stats);
            end_line(&mut text, &names.0.join(", "));
        }
        untracked(&mut text, self.rows.untracked_events, "destinations");
        text
    }

    /// One JSON object: `{"destinations":[{"proto":…,"address":…,"port":…,
    /// "connections":…,…,"names":[…]}],"untracked_events":N}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Row<'a> {
            proto: String,
            address: IpAddr,
            port: u16,
            #[serde(flatten)]
            stats: &'a DestinationStats,
            names: &'a Listed<Arc<str>>,
        }
        let rows = self
            .rows
            .sorted()
            .into_iter()
            .map(|(destination, stats, names)| Row {
                proto: protocol::Display(destination.protocol).to_string(),
                address: destination.address,
                port: destination.port,
                names,
                stats,
            })
            .collect();
        summary_json("destinations", rows, self.rows.untracked_events)
    }
}

/// A denied destination, and how it was denied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Denial {
    /// Where the denied flows went.
    pub destination: Destination,
    /// The policy rule that denied them (`default`: no allow rule allowed
    /// them), `None` for a drop rule flowtrack does not own.
    pub rule: Option<Arc<str>>,
    /// Whether they were stopped, or only reported (audit).
    pub enforced: bool,
}

/// The destinations denied during a run, each with its rule, bounded by
/// [`MAX_DESTINATIONS`]: what the end of a run lists.
///
/// ```
/// use flow_core::{FlowEvent, FlowKey};
/// use flow_supervisor::summary::Denials;
/// let key = FlowKey::tcp("0.0.0.0:0".parse()?, "192.0.2.9:443".parse()?);
/// let mut denials = Denials::default();
/// denials.record(&FlowEvent::denied(key, "default", true, 1).named("evil.example"));
/// denials.record(&FlowEvent::denied(key, "default", true, 2).named("evil.example"));
/// assert_eq!(
///     denials.to_lines(10),
///     ["denied 2 times: tcp 192.0.2.9:443 (evil.example), rule default, enforced"]
/// );
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Denials {
    rows: Rows<Denial, Listed<Arc<str>>>,
}

impl Denials {
    /// Counts `event` if it is a denial.
    pub fn record(&mut self, event: &FlowEvent) {
        let FlowEventKind::Denied { rule, enforced } = &event.kind else {
            return;
        };
        let denial = Denial {
            destination: Destination {
                protocol: event.key.protocol,
                address: event.key.dst_addr,
                port: event.key.dst_port,
            },
            rule: rule.clone(),
            enforced: *enforced,
        };
        if let Some(names) = self.rows.record(&denial, Denial::clone, event) {
            for name in [&event.host, &event.sni].into_iter().flatten() {
                names.add_name(name);
            }
        }
    }

    /// Whether nothing was denied.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// One line per denied destination, at most `max` (then a line saying
    /// how many more): `denied 3 times: tcp 192.0.2.9:443 (evil.example),
    /// rule tcp://evil.example, enforced`.
    #[must_use]
    pub fn to_lines(&self, max: usize) -> Vec<String> {
        let sorted = self.rows.sorted();
        let mut lines: Vec<String> = sorted
            .iter()
            .take(max)
            .map(|(denial, stats, names)| {
                let times = match stats.denied {
                    1 => "once".to_owned(),
                    n => format!("{n} times"),
                };
                let destination = &denial.destination;
                let mut line = format!(
                    "denied {times}: {} {}",
                    protocol::Display(destination.protocol),
                    std::net::SocketAddr::new(destination.address, destination.port)
                );
                if !names.0.is_empty() {
                    let _ = write!(line, " ({})", names.0.join(", "));
                }
                if let Some(rule) = &denial.rule {
                    let _ = write!(line, ", rule {rule}");
                }
                line.push_str(if denial.enforced {
                    ", enforced"
                } else {
                    ", audit"
                });
                line
            })
            .collect();
        let more = sorted.len().saturating_sub(max) as u64 + self.rows.untracked_events;
        if more > 0 {
            lines.push(format!("and {more} more denials (see the summary table)"));
        }
        lines
    }
}

/// A program that made connections: its executable (or, unknown, its
/// command name) and its user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Program {
    /// The executable, or the command name in brackets when the executable
    /// is unknown, or `?`.
    pub program: Arc<str>,
    /// Its user id, when known.
    pub uid: Option<u32>,
}

/// By hand: two writes to the hasher instead of the derived four (the
/// summaries hash a program per event), the same as [`ProgramRef`]'s.
impl Hash for Program {
    fn hash<H: Hasher>(&self, state: &mut H) {
        ProgramRef {
            program: &self.program,
            uid: self.uid,
        }
        .hash(state);
    }
}

/// A [`Program`] borrowed from an event: its row is looked up without
/// cloning its name.
#[derive(Debug, Clone, Copy)]
struct ProgramRef<'a> {
    program: &'a Arc<str>,
    uid: Option<u32>,
}

impl Hash for ProgramRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.program.as_bytes());
        state.write_u64(self.uid.map_or(u64::MAX, u64::from));
    }
}

impl Equivalent<Program> for ProgramRef<'_> {
    fn equivalent(&self, program: &Program) -> bool {
        // Most events share their program's name (their process's `exe`):
        // the same `Arc` needs no comparison of the text.
        self.uid == program.uid
            && (Arc::ptr_eq(self.program, &program.program) || *self.program == program.program)
    }
}

impl ProgramRef<'_> {
    /// The program, its name cloned (for a new row).
    fn owned(&self) -> Program {
        Program {
            program: Arc::clone(self.program),
            uid: self.uid,
        }
    }
}

/// Distinct pids a program's process count is exact up to; beyond, new
/// pids are no longer counted (a set of a program's pids, 4 bytes and a
/// little more each, is bounded as the rows are).
const MAX_PIDS_COUNTED: usize = 100_000;

/// What else is kept of a program: the pids it ran as.
#[derive(Debug, Clone, Default, Serialize)]
struct ProgramExtra {
    /// The first pids, listed.
    pids: Listed<u32>,
    /// Every pid that opened a connection, up to [`MAX_PIDS_COUNTED`]
    /// (the listed pids alone stop at [`MAX_LISTED`]); written as their
    /// number, `processes`.
    #[serde(rename = "processes", serialize_with = "serialize_count")]
    counted: HashSet<u32, foldhash::fast::RandomState>,
}

impl ProgramExtra {
    /// Counts the process `pid` once, whatever number of connections it
    /// opens.
    fn count_process(&mut self, pid: u32) {
        if self.counted.len() < MAX_PIDS_COUNTED && self.counted.insert(pid) {
            self.pids.add(&pid);
        }
    }

    /// Distinct processes (pids) that opened a connection.
    fn processes(&self) -> usize {
        self.counted.len()
    }
}

/// A set written as its number of members.
fn serialize_count<S: serde::Serializer, T>(
    set: &HashSet<T, foldhash::fast::RandomState>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(set.len() as u64)
}

/// Per-program totals of a stream of events (`--group-by process`),
/// bounded by [`MAX_DESTINATIONS`]. Events with no process count under
/// `?`.
#[derive(Debug, Clone)]
pub struct Programs {
    rows: Rows<Program, ProgramExtra>,
    /// The names of programs known only by their command name, `[comm]`,
    /// made once per command name rather than once per event (bounded as
    /// the rows are).
    bracketed: HashMap<Arc<str>, Arc<str>, foldhash::fast::RandomState>,
    /// `?`, the name of unknown programs, made once.
    unknown: Arc<str>,
    /// The row of each process met lately: a process's program and user
    /// do not change, and its events come one after another, so its row
    /// is found by its `Arc` rather than by hashing its program's name
    /// (which was most of the tally's cost per event).
    rows_of_processes: ArcMemo<Process, usize>,
    /// The row of events without a process, once made.
    row_of_unknown: Option<usize>,
}

impl Default for Programs {
    fn default() -> Self {
        Self {
            rows: Rows::default(),
            bracketed: HashMap::default(),
            unknown: Arc::from("?"),
            rows_of_processes: ArcMemo::default(),
            row_of_unknown: None,
        }
    }
}

impl Programs {
    /// Counts one event.
    pub fn record(&mut self, event: &FlowEvent) {
        if !counts(event) {
            return;
        }
        let remembered = match &event.process {
            Some(process) => self.rows_of_processes.get(process).copied(),
            None => self.row_of_unknown,
        };
        let Some(row) = remembered.or_else(|| self.row_of(event)) else {
            return;
        };
        let extra = self.rows.record_in(row, event);
        if let Some(pid) = event.process.as_ref().and_then(|process| process.pid)
            && event.kind == FlowEventKind::Opened
        {
            extra.count_process(pid);
        }
    }

    /// The number of the row of `event`'s program (made when new, and
    /// remembered for its process, or as the row of events without one);
    /// `None` beyond the bound.
    fn row_of(&mut self, event: &FlowEvent) -> Option<usize> {
        let process = event.process.as_deref();
        let bracketed;
        let program = ProgramRef {
            program: match process.map(|process| (&process.exe, &process.comm)) {
                Some((Some(exe), _)) => exe,
                Some((None, Some(comm))) => {
                    bracketed = self.bracketed(comm);
                    &bracketed
                }
                _ => &self.unknown,
            },
            uid: process.and_then(|process| process.uid),
        };
        let row = self.rows.row_of(&program, ProgramRef::owned, event)?;
        match &event.process {
            Some(process) => self.rows_of_processes.insert(process, row),
            None => self.row_of_unknown = Some(row),
        }
        Some(row)
    }

    /// `[comm]`, the name of a program known only by its command name.
    fn bracketed(&mut self, comm: &Arc<str>) -> Arc<str> {
        if let Some(name) = self.bracketed.get(comm) {
            return Arc::clone(name);
        }
        let name: Arc<str> = format!("[{comm}]").into();
        if self.bracketed.len() < MAX_DESTINATIONS {
            self.bracketed.insert(Arc::clone(comm), Arc::clone(&name));
        }
        name
    }

    /// Whether nothing was seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// An aligned table, one line per program.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{:<32} {:>6} {:>5} {:>6} {:>6} {:>9} {:>12} {:>17} {:>17}  pids\n",
            "program",
            "uid",
            "procs",
            "conns",
            "denied",
            "packets",
            "bytes",
            "first seen",
            "last seen"
        );
        for (program, stats, extra) in self.rows.sorted() {
            let uid = program
                .uid
                .map_or_else(|| "-".to_owned(), |uid| uid.to_string());
            let _ = write!(
                text,
                "{:<32} {uid:>6} {:>5} ",
                program.program,
                extra.processes()
            );
            write_stats(&mut text, stats);
            let pids: Vec<String> = extra.pids.0.iter().map(u32::to_string).collect();
            end_line(&mut text, &pids.join(", "));
        }
        untracked(&mut text, self.rows.untracked_events, "programs");
        text
    }

    /// One JSON object: `{"programs":[{"program":…,"uid":…,"processes":…,
    /// "pids":[…],"connections":…,…}],"untracked_events":N}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            program: &'a Program,
            #[serde(flatten)]
            extra: &'a ProgramExtra,
            #[serde(flatten)]
            stats: &'a DestinationStats,
        }
        let rows = self
            .rows
            .sorted()
            .into_iter()
            .map(|(program, stats, extra)| Row {
                program,
                extra,
                stats,
            })
            .collect();
        summary_json("programs", rows, self.rows.untracked_events)
    }
}

/// The columns every table shares.
fn write_stats(text: &mut String, stats: &DestinationStats) {
    let _ = write!(
        text,
        "{:>6} {:>6} {:>9} {:>12} {:>17} {:>17}",
        stats.connections,
        stats.denied,
        stats.packets,
        stats.bytes,
        seconds(stats.first_seen_ns),
        seconds(stats.last_seen_ns),
    );
}

/// Ends a table line with its last column, when it has one.
fn end_line(text: &mut String, last: &str) {
    if !last.is_empty() {
        text.push_str("  ");
        text.push_str(last);
    }
    text.push('\n');
}

fn untracked(text: &mut String, events: u64, rows: &str) {
    if events > 0 {
        let _ = writeln!(
            text,
            "({events} more events of {rows} beyond the first {MAX_DESTINATIONS})"
        );
    }
}

/// `{"<name>":[rows],"untracked_events":N}`, each row's fields in their
/// declared order.
fn summary_json<R: Serialize>(name: &str, rows: Vec<R>, untracked_events: u64) -> String {
    let rows = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned());
    format!("{{\"{name}\":{rows},\"untracked_events\":{untracked_events}}}")
}

/// Nanoseconds as seconds with six decimals.
fn seconds(ns: u64) -> String {
    format!("{:.6}s", Seconds(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowKey;

    /// A [`Programs`] row, as the tests look at it.
    struct ProgramRow {
        name: String,
        uid: Option<u32>,
        connections: u64,
        packets: u64,
        processes: usize,
    }

    fn program_rows(programs: &Programs) -> Vec<ProgramRow> {
        programs
            .rows
            .sorted()
            .into_iter()
            .map(|(program, stats, extra)| ProgramRow {
                name: program.program.to_string(),
                uid: program.uid,
                connections: stats.connections,
                packets: stats.packets,
                processes: extra.processes(),
            })
            .collect()
    }

    fn key(dst: &str) -> FlowKey {
        FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), dst.parse().unwrap())
    }

    /// Rows found by process (remembered) and by program (after the
    /// process was forgotten, or for another process of the program)
    /// are the same rows.
    #[test]
    fn a_process_met_again_counts_in_its_programs_row() {
        let mut programs = Programs::default();
        let processes: Vec<Arc<Process>> = (0..300)
            .map(|pid| {
                let exe = if pid % 2 == 0 {
                    "/usr/bin/a"
                } else {
                    "/usr/bin/b"
                };
                Arc::new(Process::new(pid).with_exe(exe).with_uid(0))
            })
            .collect();
        // Each process opens a flow; the first 100 open another after all
        // 300 went by (most of them forgotten by then), and each closes
        // its flows with 2 packets.
        let flows = processes.iter().chain(&processes[..100]);
        for process in flows.clone() {
            programs.record(&FlowEvent::opened(key("10.0.0.2:80"), 1).by(Arc::clone(process)));
        }
        for process in flows {
            let closed = FlowEvent::closed(key("10.0.0.2:80"), 2, 100, 2);
            programs.record(&closed.by(Arc::clone(process)));
        }
        let rows: Vec<_> = program_rows(&programs)
            .into_iter()
            .map(|row| (row.name, row.connections, row.packets, row.processes))
            .collect();
        // 150 processes each, however many connections each opened (the
        // count went on past the 8 pids listed).
        assert_eq!(
            rows,
            [
                ("/usr/bin/a".to_owned(), 200, 400, 150),
                ("/usr/bin/b".to_owned(), 200, 400, 150),
            ]
        );
        assert!(
            programs.to_json().contains(r#""processes":150,"#),
            "{}",
            programs.to_json()
        );
    }

    #[test]
    fn equal_programs_share_a_row_whatever_holds_their_names() {
        let mut programs = Programs::default();
        let processes = [
            Process::new(1).with_exe("/usr/bin/curl").with_uid(1000),
            Process::new(2).with_exe("/usr/bin/curl").with_uid(1000),
            Process::new(3).with_exe("/usr/bin/curl").with_uid(0),
            Process::new(4).with_comm("curl"),
            Process::new(5).with_comm("curl"),
        ];
        for process in processes {
            programs.record(&FlowEvent::opened(key("10.0.0.2:80"), 1).by(Arc::new(process)));
        }
        programs.record(&FlowEvent::opened(key("10.0.0.2:80"), 1));
        let rows: Vec<_> = program_rows(&programs)
            .into_iter()
            .map(|row| (row.name, row.uid, row.connections, row.processes))
            .collect();
        let row = |name: &str, uid, connections, processes| {
            (name.to_owned(), uid, connections, processes)
        };
        assert_eq!(
            rows,
            [
                row("/usr/bin/curl", Some(0), 1, 1),
                row("/usr/bin/curl", Some(1000), 2, 2),
                row("?", None, 1, 0),
                row("[curl]", None, 2, 2),
            ]
        );
    }

    #[test]
    fn destinations_differ_by_protocol_address_and_port() {
        let mut destinations = Destinations::default();
        for dst in [
            "10.0.0.2:80",
            "10.0.0.2:80",
            "10.0.0.2:81",
            "[::a00:2]:80",
            "10.0.0.3:80",
        ] {
            destinations.record(&FlowEvent::opened(key(dst), 1));
        }
        let udp = FlowKey::udp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        destinations.record(&FlowEvent::opened(udp, 1));
        let rows: Vec<_> = destinations
            .iter()
            .map(|(destination, stats)| {
                let address = std::net::SocketAddr::new(destination.address, destination.port);
                (destination.protocol, address.to_string(), stats.connections)
            })
            .collect();
        let row =
            |protocol, address: &str, connections| (protocol, address.to_owned(), connections);
        assert_eq!(
            rows,
            [
                row(6, "10.0.0.2:80", 2),
                row(6, "10.0.0.2:81", 1),
                row(6, "10.0.0.3:80", 1),
                row(6, "[::a00:2]:80", 1),
                row(17, "10.0.0.2:80", 1),
            ]
        );
    }
}
