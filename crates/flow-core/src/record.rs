//! flowtrack's JSON-lines output schema: one object per line.
//!
//! | field     | on            | value                                                   |
//! |-----------|---------------|---------------------------------------------------------|
//! | `ts_ns`   | every line    | CLOCK_MONOTONIC nanoseconds                             |
//! | `kind`    | every line    | `"opened"`, `"closed"`, `"update"` (a flow still open, `--active-timeout`), `"denied"`, `"dns"` (a lookup the scope made), or `"lost"` |
//! | `proto`   | flow lines    | `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, else the number as a string |
//! | `src`     | flow lines    | initiator address (denied: the dropped packet's source) |
//! | `sport`   | flow lines    | initiator port                                          |
//! | `dst`     | flow lines    | responder address                                       |
//! | `dport`   | flow lines    | responder port                                          |
//! | `packets` | closed, update | packets, both directions (update: so far)              |
//! | `bytes`   | closed, update | IP-level bytes, both directions                        |
//! | `src_packets`, `src_bytes` | closed, update | sent by the initiator, when the backend counts directions apart ([`FlowEvent::directions`]) |
//! | `dst_packets`, `dst_bytes` | closed, update | sent by the responder; with the `src_` pair they add up to `packets` and `bytes` |
//! | `start_ns` | closed, update | when the flow opened (CLOCK_MONOTONIC ns), when the backend knows |
//! | `reason`  | closed        | why, when the backend knows: `fin`, `reset`, `released`, `idle`, `scope_ended` ([`crate::CloseReason`]) |
//! | `host`    | flow lines    | the name the scope looked up for the destination address before the flow opened (absent when unknown) |
//! | `sni`     | flow lines    | the TLS server name the initiator sent (absent when none) |
//! | `pid`, `comm`, `exe`, `uid`, `gid` | event lines | the process behind it, each field when known ([`crate::process::Process`]); `uid` and `gid` may come without a `pid` (nflog: the socket's user, its process not found) |
//! | `cgroup`, `container` | flow lines | the socket's cgroup below the cgroup v2 root, and the container id it names ([`crate::workload`]), when the whole host is watched |
//! | `attribution` | with a process | `"kernel"` (exact) or `"best_effort"` (pid, comm and exe looked up afterwards) |
//! | `cmdline` | with a process | its arguments, an array of strings, only when asked for ([`JsonOptions::cmdline`]) |
//! | `query`, `qtype`, `rcode` | dns | the name asked for, what for (`"A"`, `"AAAA"`, …), the answer's code (`"NOERROR"`, `"NXDOMAIN"`, …) |
//! | `answers`, `cnames` | dns | the addresses at the end of the CNAME chain, and the chain |
//! | `truncated` | dns         | `true` when the answer was truncated (retried over TCP) |
//! | `rule`    | denied        | the policy rule that denied it (`"tcp://pypi.org:443"`), or `"default"` (no allow rule allowed it); absent for a drop rule flowtrack does not own |
//! | `enforced`| denied        | `true` when the flow was stopped, `false` when only reported (a policy in audit mode) |
//! | `inbound` | flow lines    | `true` when the flow was started from outside the scope (an accepted connection); absent otherwise |
//! | `resynced`| flow lines    | `true` when the backend lost messages and rebuilt the event after the loss (from a listing of its table, or a message read late behind it): `ts_ns` is the listing's or the read's time ([`FlowEvent::resynced`]); absent otherwise |
//! | `backend` | every line    | the backend that observed it (several: whose counters) |
//! | `backends`| flow lines    | every backend that observed it, `backend` first         |
//! | `count`   | lost          | observations lost, `null` when unknown                  |
//! | `point`   | lost          | where: `ring_buffer_full`, `flow_table_eviction`, `netlink_overrun`, `sequence_gap`, `queue_overflow`, `malformed` (absent when not known) |
//!
//! Unknown fields are ignored when reading, so that files written by a newer
//! flowtrack still replay.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_core::record::FlowRecord;
//!
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
//! let record = FlowRecord::event("ebpf", FlowEvent::closed(key, 10, 1_200, 5));
//! let mut line = Vec::new();
//! record.write_json_line(&mut line)?;
//! assert_eq!(
//!     String::from_utf8(line.clone())?,
//!     "{\"ts_ns\":5,\"kind\":\"closed\",\"proto\":\"tcp\",\"src\":\"10.0.0.1\",\"sport\":40000,\
//!      \"dst\":\"10.0.0.2\",\"dport\":80,\"packets\":10,\"bytes\":1200,\"backend\":\"ebpf\",\
//!      \"backends\":[\"ebpf\"]}\n"
//! );
//! assert_eq!(FlowRecord::from_json_line(std::str::from_utf8(&line)?)?, record);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::IpAddr;

use serde::Deserialize;

use std::sync::Arc;

use crate::counters::{Counters, DirectionCounters};
use crate::dns::{DnsLookup, QueryType, ResponseCode};
use crate::json_fragments::{ArcFragments, BackendFragments};
use crate::json_line::{JsonObject, JsonValue, Name};
use crate::process::{Attribution, Process};
use crate::workload::Workload;
use crate::{CloseReason, FlowEvent, FlowEventKind, FlowKey, LossPoint, protocol};

/// One line of output: an observation, tagged with the backend that made it.
///
/// ```
/// use flow_core::record::{FlowRecord, RecordItem};
/// let record = FlowRecord::from_json_line(r#"{"ts_ns":5,"kind":"lost","backend":"nflog","count":2}"#)?;
/// assert_eq!(record.backend, "nflog");
/// assert!(matches!(record.item, RecordItem::Lost { count: Some(2), .. }));
/// # Ok::<(), flow_core::record::RecordError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord<'a> {
    /// The backend's name (for an event several backends observed, the one
    /// whose counters and time it carries).
    pub backend: Cow<'a, str>,
    /// Other backends that observed the same event (`--backend both`).
    /// In JSON, event lines list `backend` and these as `backends`.
    pub also_seen_by: Vec<Cow<'a, str>>,
    /// What the backend observed.
    pub item: RecordItem<'a>,
}

/// The content of a [`FlowRecord`].
///
/// ```
/// use flow_core::record::{FlowRecord, RecordItem};
/// let line = r#"{"ts_ns":1,"kind":"opened","proto":"udp","src":"::1","sport":5,"dst":"::1","dport":53,"backend":"ebpf"}"#;
/// let RecordItem::Event(event) = FlowRecord::from_json_line(line)?.item else { panic!() };
/// assert_eq!(event.key.protocol, 17);
/// # Ok::<(), flow_core::record::RecordError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordItem<'a> {
    /// A flow event (borrowed when written, owned when read).
    Event(Cow<'a, FlowEvent>),
    /// Observations were lost.
    Lost {
        /// Where. Written to JSON as `point` ([`LossPoint::name`]) unless it
        /// is [`LossPoint::Recorded`]; a line without a point this version
        /// knows reads back as that.
        point: LossPoint,
        /// How many, when known.
        count: Option<u64>,
        /// When the loss was noticed.
        timestamp_ns: u64,
    },
}

impl<'a> FlowRecord<'a> {
    /// A record of an event.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// use flow_core::record::FlowRecord;
    /// let key = FlowKey::tcp("10.0.0.1:1".parse()?, "10.0.0.2:2".parse()?);
    /// assert_eq!(FlowRecord::event("ebpf", FlowEvent::opened(key, 3)).kind_name(), "opened");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn event(backend: impl Into<Cow<'a, str>>, event: FlowEvent) -> Self {
        Self {
            backend: backend.into(),
            also_seen_by: Vec::new(),
            item: RecordItem::Event(Cow::Owned(event)),
        }
    }

    /// A record of an event that lives elsewhere (the writer's hot path:
    /// nothing is cloned).
    #[must_use]
    pub fn borrowed(backend: impl Into<Cow<'a, str>>, event: &'a FlowEvent) -> Self {
        Self {
            backend: backend.into(),
            also_seen_by: Vec::new(),
            item: RecordItem::Event(Cow::Borrowed(event)),
        }
    }

    /// A record of a loss.
    ///
    /// ```
    /// use flow_core::LossPoint;
    /// use flow_core::record::FlowRecord;
    /// let record = FlowRecord::lost("nflog", LossPoint::NetlinkOverrun, None, 9);
    /// let mut line = Vec::new();
    /// record.write_json_line(&mut line)?;
    /// assert_eq!(line, b"{\"ts_ns\":9,\"kind\":\"lost\",\"backend\":\"nflog\",\"count\":null,\"point\":\"netlink_overrun\"}\n");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn lost(
        backend: impl Into<Cow<'a, str>>,
        point: LossPoint,
        count: Option<u64>,
        timestamp_ns: u64,
    ) -> Self {
        Self {
            backend: backend.into(),
            also_seen_by: Vec::new(),
            item: RecordItem::Lost {
                point,
                count,
                timestamp_ns,
            },
        }
    }

    /// The record's time, CLOCK_MONOTONIC nanoseconds.
    ///
    /// ```
    /// use flow_core::LossPoint;
    /// use flow_core::record::FlowRecord;
    /// assert_eq!(FlowRecord::lost("ebpf", LossPoint::RingBufferFull, None, 7).timestamp_ns(), 7);
    /// ```
    #[must_use]
    pub fn timestamp_ns(&self) -> u64 {
        match &self.item {
            RecordItem::Event(event) => event.timestamp_ns,
            RecordItem::Lost { timestamp_ns, .. } => *timestamp_ns,
        }
    }

    /// The `kind` field: `opened`, `closed`, `denied`, `dns` or `lost`.
    ///
    /// ```
    /// use flow_core::LossPoint;
    /// use flow_core::record::FlowRecord;
    /// assert_eq!(FlowRecord::lost("ebpf", LossPoint::RingBufferFull, None, 7).kind_name(), "lost");
    /// ```
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match &self.item {
            RecordItem::Event(event) => event.kind.name(),
            RecordItem::Lost { .. } => "lost",
        }
    }

    /// Writes the record as one JSON line, newline included, with the
    /// default [`JsonOptions`] (example: the module documentation).
    ///
    /// # Errors
    /// Whatever the writer returns.
    pub fn write_json_line<W: io::Write>(&self, writer: W) -> io::Result<()> {
        self.write_json_line_with(writer, JsonOptions::default())
    }

    /// Writes the record as one JSON line, newline included.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flow_core::process::Process;
    /// use flow_core::{FlowEvent, FlowKey};
    /// use flow_core::record::{FlowRecord, JsonOptions};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let process = Process::new(7).with_comm("curl").with_cmdline(["curl", "-H", "token"]);
    /// let record = FlowRecord::event("ebpf", FlowEvent::opened(key, 5).by(Arc::new(process)));
    /// let mut line = Vec::new();
    /// record.write_json_line(&mut line)?;
    /// assert!(!String::from_utf8(line)?.contains("cmdline"), "command lines hold secrets");
    /// let mut line = Vec::new();
    /// record.write_json_line_with(&mut line, JsonOptions::default().cmdline(true))?;
    /// assert!(String::from_utf8(line)?.contains(r#""cmdline":["curl","-H","token"]"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Whatever the writer returns.
    pub fn write_json_line_with<W: io::Write>(
        &self,
        mut writer: W,
        options: JsonOptions,
    ) -> io::Result<()> {
        let mut line = Vec::with_capacity(256);
        self.append_json_line(&mut line, options);
        writer.write_all(&line)
    }

    /// Appends the record as one JSON line, newline included, to `line`:
    /// [`FlowRecord::write_json_line_with`] without an intermediate copy,
    /// for writers that buffer lines themselves.
    /// A stream of records is written faster by a [`JsonEncoder`].
    pub fn append_json_line(&self, line: &mut Vec<u8>, options: JsonOptions) {
        JsonEncoder::new(options).append_line(self, line);
    }

    /// Parses one JSON line (without or with its newline).
    ///
    /// ```
    /// use flow_core::record::FlowRecord;
    /// let error = FlowRecord::from_json_line(r#"{"ts_ns":1,"kind":"closed","backend":"x"}"#).unwrap_err();
    /// assert_eq!(error.to_string(), "missing field `proto` (required on \"closed\")");
    /// ```
    ///
    /// # Errors
    /// [`RecordError`] names the field that is missing or malformed.
    pub fn from_json_line(line: &str) -> Result<FlowRecord<'static>, RecordError> {
        let mut deserializer = serde_json::Deserializer::from_str(line);
        let wire: WireRecord =
            serde_path_to_error::deserialize(&mut deserializer).map_err(RecordError::from_serde)?;
        deserializer.end().map_err(|e| RecordError {
            field: None,
            message: strip_position(&e),
        })?;
        wire.into_record()
    }
}

/// How records are written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JsonOptions {
    cmdline: bool,
}

impl JsonOptions {
    /// Whether processes' command lines are written (`cmdline`); off by
    /// default: command lines in CI often hold secrets.
    #[must_use]
    pub fn cmdline(mut self, write: bool) -> Self {
        self.cmdline = write;
        self
    }
}

/// Writes records as JSON lines, as [`FlowRecord::append_json_line`]
/// does, faster for a stream of them: it keeps the JSON of the processes,
/// names and backends it wrote last (a few dozen of each), and copies it
/// into a line that has the same process or name (the same `Arc`) or
/// backends again.
///
/// ```
/// use std::sync::Arc;
/// use flow_core::process::Process;
/// use flow_core::{FlowEvent, FlowKey};
/// use flow_core::record::{FlowRecord, JsonEncoder, JsonOptions};
///
/// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
/// let curl = Arc::new(Process::new(7).with_comm("curl"));
/// let mut encoder = JsonEncoder::new(JsonOptions::default());
/// let mut lines = Vec::new();
/// for event in [FlowEvent::opened(key, 1), FlowEvent::closed(key, 2, 120, 3)] {
///     encoder.append_line(&FlowRecord::event("ebpf", event.by(Arc::clone(&curl))), &mut lines);
/// }
/// let lines = String::from_utf8(lines)?;
/// assert_eq!(lines.matches(r#""pid":7,"comm":"curl""#).count(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct JsonEncoder {
    options: JsonOptions,
    processes: ArcFragments<Process>,
    hosts: ArcFragments<str>,
    backends: BackendFragments,
}

impl JsonEncoder {
    /// An encoder writing with `options`, having kept nothing yet.
    #[must_use]
    pub fn new(options: JsonOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    /// Appends `record` as one JSON line, newline included, to `line`.
    pub fn append_line(&mut self, record: &FlowRecord<'_>, line: &mut Vec<u8>) {
        write_json(record, self, line);
        line.push(b'\n');
    }
}

/// The record's JSON object, without its newline (schema: the module
/// documentation).
fn write_json(record: &FlowRecord<'_>, encoder: &mut JsonEncoder, out: &mut Vec<u8>) {
    let mut object = JsonObject::open(out, "ts_ns", &record.timestamp_ns());
    object.entry("kind", &Name(record.kind_name()));
    match &record.item {
        RecordItem::Event(event) => {
            write_key(&mut object, &event.key);
            if let Some(total) = event.kind.counters() {
                write_counters(&mut object, total, event);
            }
            match &event.kind {
                FlowEventKind::Closed { .. } => {
                    if let Some(reason) = event.close_reason {
                        object.entry("reason", &Name(reason.name()));
                    }
                }
                FlowEventKind::Dns(lookup) => write_lookup(&mut object, lookup),
                FlowEventKind::Denied { rule, enforced } => {
                    if let Some(rule) = rule {
                        object.entry("rule", rule.as_ref());
                    }
                    object.entry("enforced", enforced);
                }
                _ => {}
            }
            if let Some(host) = &event.host {
                encoder.hosts.append(host, object.buffer(), |host, out| {
                    JsonObject::continuing(out).entry("host", host);
                });
            }
            if let Some(sni) = &event.sni {
                object.entry("sni", sni);
            }
            if let Some(process) = &event.process {
                let options = encoder.options;
                encoder
                    .processes
                    .append(process, object.buffer(), |process, out| {
                        write_process(&mut JsonObject::continuing(out), process, options);
                    });
            }
            if let Some(workload) = &event.workload {
                object.entry("cgroup", &workload.cgroup);
                if let Some(container) = &workload.container {
                    object.entry("container", container);
                }
            }
            if event.inbound {
                object.entry("inbound", &true);
            }
            if event.resynced {
                object.entry("resynced", &true);
            }
            encoder.backends.append(
                &record.backend,
                &record.also_seen_by,
                object.buffer(),
                |out| {
                    let mut object = JsonObject::continuing(out);
                    object.entry("backend", record.backend.as_ref());
                    object.entry("backends", &Backends(record));
                },
            );
        }
        RecordItem::Lost { count, point, .. } => {
            object.entry("backend", record.backend.as_ref());
            match count {
                Some(count) => object.entry("count", count),
                None => object.entry("count", &Null),
            }
            if *point != LossPoint::Recorded {
                object.entry("point", &Name(point.name()));
            }
        }
    }
    object.close();
}

/// `backend` and `also_seen_by` as one JSON array.
struct Backends<'r, 'a>(&'r FlowRecord<'a>);

impl JsonValue for Backends<'_, '_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        self.0.backend.as_ref().write_json(out);
        for backend in &self.0.also_seen_by {
            out.push(b',');
            backend.as_ref().write_json(out);
        }
        out.push(b']');
    }
}

/// The counters of a `closed` or `update` line: totals, each direction
/// when known, and when the flow opened when known.
fn write_counters(object: &mut JsonObject<'_>, total: Counters, event: &FlowEvent) {
    object.entry("packets", &total.packets);
    object.entry("bytes", &total.bytes);
    if let Some(directions) = &event.directions {
        object.entry("src_packets", &directions.src.packets);
        object.entry("src_bytes", &directions.src.bytes);
        object.entry("dst_packets", &directions.dst.packets);
        object.entry("dst_bytes", &directions.dst.bytes);
    }
    if let Some(start_ns) = event.start_ns {
        object.entry("start_ns", &start_ns);
    }
}

/// JSON's `null`.
struct Null;

impl JsonValue for Null {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"null");
    }
}

fn write_lookup(object: &mut JsonObject<'_>, lookup: &DnsLookup) {
    object.entry("query", &lookup.query);
    object.entry("qtype", lookup.qtype.to_string().as_str());
    object.entry("rcode", lookup.rcode.to_string().as_str());
    object.entry("answers", lookup.answers.as_slice());
    object.entry("cnames", lookup.cnames.as_slice());
    if lookup.truncated {
        object.entry("truncated", &true);
    }
}

fn write_process(object: &mut JsonObject<'_>, process: &Process, options: JsonOptions) {
    if let Some(pid) = process.pid {
        object.entry("pid", &pid);
    }
    if let Some(comm) = &process.comm {
        object.entry("comm", comm);
    }
    if let Some(exe) = &process.exe {
        object.entry("exe", exe);
    }
    if let Some(uid) = process.uid {
        object.entry("uid", &uid);
    }
    if let Some(gid) = process.gid {
        object.entry("gid", &gid);
    }
    object.entry("attribution", &Name(process.attribution.name()));
    if options.cmdline
        && let Some(cmdline) = &process.cmdline
    {
        object.entry("cmdline", &**cmdline);
    }
}

fn write_key(object: &mut JsonObject<'_>, key: &FlowKey) {
    match protocol::name(key.protocol) {
        Some(name) => object.entry("proto", &Name(name)),
        None => object.entry("proto", key.protocol.to_string().as_str()),
    }
    object.entry("src", &key.src_addr);
    object.entry("sport", &key.src_port);
    object.entry("dst", &key.dst_addr);
    object.entry("dport", &key.dst_port);
}

/// A line that is not a valid record, and which field is at fault.
///
/// ```
/// use flow_core::record::FlowRecord;
/// let error = FlowRecord::from_json_line(r#"{"ts_ns":-1}"#).unwrap_err();
/// assert_eq!(error.field.as_deref(), Some("ts_ns"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RecordError {}

impl RecordError {
    fn from_serde(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let field = (path != ".").then_some(path);
        Self {
            field,
            message: strip_position(error.inner()),
        }
    }

    fn missing(field: &str, kind: &str) -> Self {
        Self {
            field: None,
            message: format!("missing field `{field}` (required on \"{kind}\")"),
        }
    }
}

/// serde_json appends " at line 1 column N"; within one line the caller
/// names the line, so only the column is kept.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => format!("{message} (column {})", error.column()),
        None => text,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireKind {
    Opened,
    Closed,
    Update,
    Denied,
    Dns,
    Lost,
}

/// The schema as read: everything optional but what every line has, then
/// checked per kind in [`WireRecord::into_record`] to name what is missing.
#[derive(Deserialize)]
struct WireRecord {
    ts_ns: u64,
    kind: WireKind,
    backend: String,
    proto: Option<String>,
    src: Option<IpAddr>,
    sport: Option<u16>,
    dst: Option<IpAddr>,
    dport: Option<u16>,
    packets: Option<u64>,
    bytes: Option<u64>,
    #[serde(flatten)]
    directions: WireDirections,
    start_ns: Option<u64>,
    count: Option<u64>,
    point: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    resynced: bool,
    #[serde(default)]
    inbound: bool,
    rule: Option<Arc<str>>,
    /// Absent on lines of a flowtrack before policies: every denial was a
    /// drop rule's, enforced.
    #[serde(default = "enforced_by_default")]
    enforced: bool,
    #[serde(default)]
    backends: Vec<String>,
    host: Option<Arc<str>>,
    sni: Option<Arc<str>>,
    /// The container is derived from the cgroup again ([`Workload::new`]).
    cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    process: WireProcess,
    #[serde(flatten)]
    lookup: WireLookup,
}

fn enforced_by_default() -> bool {
    true
}

/// The process fields of a line.
#[derive(Deserialize)]
struct WireProcess {
    pid: Option<u32>,
    comm: Option<Arc<str>>,
    exe: Option<Arc<str>>,
    uid: Option<u32>,
    gid: Option<u32>,
    attribution: Option<String>,
    cmdline: Option<Vec<Arc<str>>>,
}

impl WireProcess {
    /// The process, if the line names one (by its pid, or its user).
    fn into_process(self) -> Option<Arc<Process>> {
        if self.pid.is_none() && self.uid.is_none() {
            return None;
        }
        let mut process = Process::unidentified();
        process.pid = self.pid;
        process.comm = self.comm;
        process.exe = self.exe;
        process.uid = self.uid;
        process.gid = self.gid;
        process.cmdline = self.cmdline.map(Into::into);
        // An attribution this version does not know reads as best effort:
        // never claim more certainty than the file did.
        process.attribution = match self.attribution.as_deref() {
            None => Attribution::Kernel,
            Some(name) => Attribution::from_name(name).unwrap_or(Attribution::BestEffort),
        };
        Some(Arc::new(process))
    }
}

/// The per-direction counters of a line.
#[derive(Deserialize)]
struct WireDirections {
    src_packets: Option<u64>,
    src_bytes: Option<u64>,
    dst_packets: Option<u64>,
    dst_bytes: Option<u64>,
}

impl WireDirections {
    /// The counters of each direction, if the line has them: all four
    /// fields or none, adding up to the line's `total`.
    fn into_directions(
        self,
        total: Counters,
        kind: &str,
    ) -> Result<Option<DirectionCounters>, RecordError> {
        let fields = [
            ("src_packets", self.src_packets),
            ("src_bytes", self.src_bytes),
            ("dst_packets", self.dst_packets),
            ("dst_bytes", self.dst_bytes),
        ];
        if fields.iter().all(|(_, value)| value.is_none()) {
            return Ok(None);
        }
        if let Some((missing, _)) = fields.iter().find(|(_, value)| value.is_none()) {
            return Err(RecordError {
                field: None,
                message: format!(
                    "missing field `{missing}` (a \"{kind}\" line with counters by direction has all four)"
                ),
            });
        }
        let [src_packets, src_bytes, dst_packets, dst_bytes] = fields.map(|(_, v)| v.unwrap_or(0));
        let directions = DirectionCounters::new(
            Counters::new(src_packets, src_bytes),
            Counters::new(dst_packets, dst_bytes),
        );
        let sum = (
            src_packets.checked_add(dst_packets),
            src_bytes.checked_add(dst_bytes),
        );
        if sum != (Some(total.packets), Some(total.bytes)) {
            return Err(RecordError {
                field: None,
                message: format!(
                    "the counters by direction do not add up to `packets` {} and `bytes` {}",
                    total.packets, total.bytes
                ),
            });
        }
        Ok(Some(directions))
    }
}

/// The DNS fields of a line.
#[derive(Deserialize)]
struct WireLookup {
    query: Option<Arc<str>>,
    qtype: Option<String>,
    rcode: Option<String>,
    #[serde(default)]
    answers: Vec<IpAddr>,
    #[serde(default)]
    cnames: Vec<Arc<str>>,
    #[serde(default)]
    truncated: bool,
}

impl WireLookup {
    fn into_lookup(self) -> Result<DnsLookup, RecordError> {
        let query = self
            .query
            .ok_or_else(|| RecordError::missing("query", "dns"))?;
        let qtype = self
            .qtype
            .ok_or_else(|| RecordError::missing("qtype", "dns"))?;
        let rcode = self
            .rcode
            .ok_or_else(|| RecordError::missing("rcode", "dns"))?;
        let invalid = |field: &str, value: &str, expected: &str| RecordError {
            field: Some(field.into()),
            message: format!("{value:?} is not {expected}"),
        };
        let qtype = QueryType::parse(&qtype)
            .ok_or_else(|| invalid("qtype", &qtype, "a DNS type (\"A\", \"TYPE65280\")"))?;
        let rcode = ResponseCode::parse(&rcode).ok_or_else(|| {
            invalid(
                "rcode",
                &rcode,
                "a DNS response code (\"NXDOMAIN\", \"RCODE11\")",
            )
        })?;
        Ok(DnsLookup::new(query, qtype, rcode)
            .with_answers(self.answers)
            .with_cnames(self.cnames)
            .truncated(self.truncated))
    }
}

impl WireRecord {
    fn into_record(self) -> Result<FlowRecord<'static>, RecordError> {
        let kind_name = match self.kind {
            WireKind::Opened => "opened",
            WireKind::Closed => "closed",
            WireKind::Update => "update",
            WireKind::Denied => "denied",
            WireKind::Dns => "dns",
            WireKind::Lost => {
                // A point this version does not know, from a newer
                // flowtrack, is read as unknown rather than refused.
                let point = self
                    .point
                    .as_deref()
                    .and_then(LossPoint::from_name)
                    .unwrap_or(LossPoint::Recorded);
                return Ok(FlowRecord::lost(
                    self.backend,
                    point,
                    self.count,
                    self.ts_ns,
                ));
            }
        };
        fn require<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, RecordError> {
            value.ok_or_else(|| RecordError::missing(field, kind))
        }
        let proto_text = require(self.proto, "proto", kind_name)?;
        let protocol = protocol::parse(&proto_text).ok_or_else(|| RecordError {
            field: Some("proto".into()),
            message: format!(
                "unknown protocol {proto_text:?}: expected tcp, udp, icmp, icmpv6 or a number 0-255"
            ),
        })?;
        let key = FlowKey {
            src_addr: require(self.src, "src", kind_name)?,
            src_port: require(self.sport, "sport", kind_name)?,
            dst_addr: require(self.dst, "dst", kind_name)?,
            dst_port: require(self.dport, "dport", kind_name)?,
            protocol,
        };
        let counted = matches!(self.kind, WireKind::Closed | WireKind::Update);
        let total = if counted {
            Counters::new(
                require(self.packets, "packets", kind_name)?,
                require(self.bytes, "bytes", kind_name)?,
            )
        } else {
            Counters::default()
        };
        let directions = if counted {
            self.directions.into_directions(total, kind_name)?
        } else {
            None
        };
        let event = match self.kind {
            WireKind::Closed => FlowEvent::closed(key, total.packets, total.bytes, self.ts_ns)
                // A reason this version does not know reads as unknown.
                .because(self.reason.as_deref().and_then(CloseReason::from_name)),
            WireKind::Update => FlowEvent::update(key, total.packets, total.bytes, self.ts_ns),
            WireKind::Denied => FlowEvent::denied(key, self.rule, self.enforced, self.ts_ns),
            WireKind::Dns => FlowEvent::dns(key, self.lookup.into_lookup()?, self.ts_ns),
            _ => FlowEvent::opened(key, self.ts_ns),
        }
        .named(self.host)
        .with_sni(self.sni)
        .by(self.process.into_process())
        .within(self.cgroup.map(|cgroup| Arc::new(Workload::new(cgroup))))
        .resynced(self.resynced)
        .inbound(self.inbound);
        let event = FlowEvent {
            directions,
            start_ns: if counted { self.start_ns } else { None },
            ..event
        };
        let mut record = FlowRecord::event(self.backend, event);
        record.also_seen_by = self
            .backends
            .into_iter()
            .filter(|other| *other != record.backend)
            .map(Cow::Owned)
            .collect();
        Ok(record)
    }
}
