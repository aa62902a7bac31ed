//! Writing records for people (`text`) and machines (`json`).

use std::io::{self, Write};

use flow_core::display::{Count, LossCount};
use flow_core::record::{FlowRecord, JsonEncoder, JsonOptions, RecordItem};
use flow_core::{FlowEventKind, LossPoint, protocol};

use crate::columns::Line;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One aligned, readable line per record.
    #[default]
    Text,
    /// JSON lines, one object per record (schema: `flow_core::record`, and the README).
    Json,
}

impl OutputFormat {
    /// Every format, in declaration order.
    pub const ALL: [Self; 2] = [Self::Text, Self::Json];

    /// Its name on the command line: `text` or `json`.
    ///
    /// ```
    /// use flow_supervisor::output::OutputFormat;
    /// assert_eq!(OutputFormat::Json.name(), "json");
    /// assert_eq!("text".parse(), Ok(OutputFormat::Text));
    /// ```
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = crate::UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        crate::UnknownName::find(name, &Self::ALL, |format| format.name())
    }
}

/// Writes records in one format to a buffered writer, counting the records
/// the writer took whole.
///
/// Records are buffered (64 KiB) and handed to the writer in large blocks.
/// When the writer fails, the records it did not take whole are dropped
/// and the error returned: [`RecordWriter::records_written`] then counts
/// exactly the lines that reached it. The writer may be left with part of
/// a line (a pipe), unless it cuts that back itself; so stop writing after
/// an error.
///
/// ```
/// use flow_core::{FlowEvent, FlowKey};
/// use flow_core::record::FlowRecord;
/// use flow_supervisor::output::{OutputFormat, RecordWriter};
///
/// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
/// let mut writer = RecordWriter::new(OutputFormat::Text, Vec::new());
/// writer.write(&FlowRecord::event("ebpf", FlowEvent::closed(key, 6, 400, 1_500_000_000)))?;
/// writer.flush()?;
/// assert_eq!(writer.records_written(), 1);
/// let text = String::from_utf8(writer.into_inner()?)?;
/// assert_eq!(
///     text,
///     concat!(
///         "        1.500000000  closed  ebpf    tcp           10.0.0.1:40000 -> 10.0.0.2:80          ",
///         " -                              6 pkts        400 B\n",
///     )
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RecordWriter<W: Write> {
    format: OutputFormat,
    json: JsonEncoder,
    writer: W,
    /// Whole lines not yet handed to `writer`.
    buffer: Vec<u8>,
    /// Where each line in `buffer` ends.
    line_ends: Vec<usize>,
    /// Records `writer` took whole.
    written: u64,
}

/// Bytes buffered before they are handed to the writer.
const BUFFER_BYTES: usize = 64 * 1024;

impl<W: Write> RecordWriter<W> {
    /// A writer of `format` records to `writer`, buffered.
    pub fn new(format: OutputFormat, writer: W) -> Self {
        Self {
            format,
            json: JsonEncoder::default(),
            writer,
            buffer: Vec::with_capacity(BUFFER_BYTES),
            line_ends: Vec::new(),
            written: 0,
        }
    }

    /// The same writer, writing JSON with `options` (e.g. processes'
    /// command lines, which are left out by default).
    #[must_use]
    pub fn with_json_options(mut self, options: JsonOptions) -> Self {
        self.json = JsonEncoder::new(options);
        self
    }

    /// Writes one record (buffered: call [`RecordWriter::flush`]).
    ///
    /// # Errors
    /// The underlying writer's error, when the buffer was full and handed
    /// on; the records buffered then that it did not take are dropped.
    pub fn write(&mut self, record: &FlowRecord<'_>) -> io::Result<()> {
        match self.format {
            OutputFormat::Json => self.json.append_line(record, &mut self.buffer),
            OutputFormat::Text => write_text_line(record, &mut self.buffer),
        }
        self.line_ends.push(self.buffer.len());
        if self.buffer.len() >= BUFFER_BYTES {
            self.hand_on()?;
        }
        Ok(())
    }

    /// Hands buffered records to the underlying writer and flushes it.
    ///
    /// # Errors
    /// The underlying writer's error; the records it did not take whole
    /// are dropped.
    pub fn flush(&mut self) -> io::Result<()> {
        self.hand_on()?;
        self.writer.flush()
    }

    /// Records the underlying writer took whole: every line of them.
    #[must_use]
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// The error of the final flush.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.writer)
    }

    /// Writes the buffer out, counting the lines that went whole; empties
    /// it whether or not the writer took everything.
    fn hand_on(&mut self) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.buffer.len() {
                break Ok(());
            }
            match self.writer.write(&self.buffer[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        let whole = self.line_ends.partition_point(|&end| end <= sent);
        self.written += whole as u64;
        self.buffer.clear();
        self.line_ends.clear();
        result
    }
}

/// `   1.500000000  closed  ebpf    tcp   10.0.0.1:40000 -> 151.101.0.223:443  pypi.org   6 pkts  400 B  fin  curl[4711]`
///
/// After the key: on a `closed` line the destination's name (its host, or
/// the server name the client sent, `-` when neither is known), the
/// counters and the reason (an `update` line: the counters so far); on
/// `opened` lines the name when known; on
/// `denied` lines the name (`-` when unknown), the policy rule that denied
/// the flow when it was flowtrack's, and `enforced` or `audit`; on a `dns`
/// line the lookup and its answer. Last, the process,
/// `comm[pid]`, when known, and under `watch --all` the container
/// (`container` and its short id) or else the cgroup.
fn write_text_line(record: &FlowRecord<'_>, out: &mut Vec<u8>) {
    let mut line = Line::new(out);
    line.seconds(record.timestamp_ns(), 19)
        .raw(b"  ")
        .name(record.kind_name(), 6)
        .raw(b"  ")
        .left(&record.backend, 6)
        .raw(b"  ");
    match &record.item {
        RecordItem::Event(event) => {
            let key = &event.key;
            match protocol::name(key.protocol) {
                Some(name) => line.name(name, 6),
                None => line.left(&key.protocol.to_string(), 6),
            };
            line.raw(b" ")
                .address(key.src_addr, key.src_port, 21, true)
                .raw(b" -> ");
            let name = event.host.as_deref().or(event.sni.as_deref());
            match &event.kind {
                FlowEventKind::Closed {
                    pkt_count,
                    byte_count,
                }
                | FlowEventKind::Update {
                    pkt_count,
                    byte_count,
                } => {
                    line.address(key.dst_addr, key.dst_port, 21, false)
                        .raw(b" ")
                        .left(name.unwrap_or("-"), 24)
                        .raw(b" ")
                        .number(*pkt_count, 7)
                        .raw(b" pkts ")
                        .number(*byte_count, 10)
                        .raw(b" B");
                    if let Some(reason) = event.close_reason {
                        line.raw(b"  ").raw(reason.name().as_bytes());
                    }
                }
                FlowEventKind::Dns(lookup) => {
                    line.address(key.dst_addr, key.dst_port, 21, false)
                        .raw(b" ")
                        .left(&lookup.query, 0)
                        .display(format_args!(" {} {}", lookup.qtype, lookup.rcode));
                    for (index, answer) in lookup.answers.iter().enumerate() {
                        line.raw(if index == 0 { b" " } else { b"," })
                            .display(answer);
                    }
                    if !lookup.cnames.is_empty() {
                        line.raw(b" via");
                        for cname in &lookup.cnames {
                            line.raw(b" ").left(cname, 0);
                        }
                    }
                }
                FlowEventKind::Denied { rule, enforced } => {
                    line.address(key.dst_addr, key.dst_port, 21, false)
                        .raw(b" ")
                        .left(name.unwrap_or("-"), 24);
                    if let Some(rule) = rule {
                        line.raw(b"  rule ").left(rule, 0);
                    }
                    line.raw(if *enforced { b"  enforced" } else { b"  audit" });
                }
                // The name column, when something follows the key.
                _ if name.is_some() || event.process.is_some() || event.workload.is_some() => {
                    line.address(key.dst_addr, key.dst_port, 21, false)
                        .raw(b" ")
                        .left(name.unwrap_or("-"), 24);
                }
                _ => {
                    line.address(key.dst_addr, key.dst_port, 0, false);
                }
            }
            if let Some(process) = &event.process {
                // comm[pid], or [uid N] when only the user is known.
                line.raw(b"  ")
                    .left(process.comm.as_deref().unwrap_or(""), 0);
                match (process.pid, process.uid) {
                    (Some(pid), _) => line.raw(b"[").number(u64::from(pid), 0).raw(b"]"),
                    (None, Some(uid)) => line.raw(b"[uid ").number(u64::from(uid), 0).raw(b"]"),
                    (None, None) => line.raw(b"[?]"),
                };
            }
            if let Some(workload) = &event.workload {
                // A container by its short id (as `docker ps` shows it),
                // else the cgroup.
                match &workload.container {
                    Some(id) => line
                        .raw(b"  container ")
                        .left(id.get(..12).unwrap_or(id), 0),
                    None => line.raw(b"  cgroup ").left(&workload.cgroup, 0),
                };
            }
        }
        RecordItem::Lost {
            point: LossPoint::ExportDropped,
            count,
            ..
        } => {
            match count {
                Some(count) => line.display(format_args!(
                    "{} not exported (export dropped)",
                    Count(*count, "flow record")
                )),
                None => line.display(format_args!("flow records not exported (export dropped)")),
            };
        }
        RecordItem::Lost { point, count, .. } => {
            line.display(format_args!("{} lost ({point})", LossCount(*count)));
        }
        // RecordItem is non-exhaustive; show what a newer kind holds rather
        // than dropping it.
        other => {
            line.display(format_args!("{other:?}"));
        }
    }
    line.raw(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::{CloseReason, FlowEvent, FlowKey, LossPoint};

    fn text_of(record: &FlowRecord<'_>) -> String {
        let mut writer = RecordWriter::new(OutputFormat::Text, Vec::new());
        writer.write(record).unwrap();
        String::from_utf8(writer.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn text_columns_align_for_ipv4() {
        let short = FlowKey::udp("1.2.3.4:5".parse().unwrap(), "6.7.8.9:53".parse().unwrap());
        let long = FlowKey::tcp(
            "192.168.100.200:65535".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let a = text_of(&FlowRecord::event(
            "nflog",
            FlowEvent::closed(short, 1, 2, 3),
        ));
        let b = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::closed(long, 1, 2, 123_456_789_000_000_000),
        ));
        assert_eq!(a.find("->"), b.find("->"));
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn text_of_a_close_ends_with_its_reason_when_known() {
        let key = FlowKey::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let closed = FlowEvent::closed(key, 6, 400, 1_500_000_000);
        let known = text_of(&FlowRecord::event(
            "ebpf",
            closed.clone().because(CloseReason::Reset),
        ));
        assert_eq!(
            known,
            "        1.500000000  closed  ebpf    tcp           10.0.0.1:40000 -> 10.0.0.2:80           -                              6 pkts        400 B  reset\n"
        );
        let unknown = text_of(&FlowRecord::event("ebpf", closed));
        assert_eq!(unknown, known.replace("  reset", ""));
    }

    #[test]
    fn text_ends_with_the_container_or_the_cgroup() {
        use flow_core::workload::Workload;
        use std::sync::Arc;
        let key = FlowKey::udp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
        );
        let id = "3f1c".repeat(16);
        let in_container = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::opened(key, 1).within(Arc::new(Workload::new(format!(
                "/system.slice/docker-{id}.scope"
            )))),
        ));
        assert!(
            in_container.ends_with(
                "10.0.0.2:53           -                         container 3f1c3f1c3f1c\n"
            ),
            "{in_container:?}"
        );
        let in_cgroup = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::closed(key, 1, 60, 2).within(Arc::new(Workload::new("/user.slice"))),
        ));
        assert!(
            in_cgroup.ends_with("60 B  cgroup /user.slice\n"),
            "{in_cgroup:?}"
        );
    }

    #[test]
    fn text_names_the_destination_and_the_process() {
        use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
        use flow_core::process::Process;
        use std::sync::Arc;
        let key = FlowKey::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "151.101.0.223:443".parse().unwrap(),
        );
        let curl = Arc::new(Process::new(4711).with_comm("curl"));
        let opened = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::opened(key, 1)
                .named("pypi.org")
                .by(Arc::clone(&curl)),
        ));
        assert!(
            opened.ends_with("-> 151.101.0.223:443     pypi.org                  curl[4711]\n"),
            "{opened:?}"
        );
        let closed = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::closed(key, 6, 400, 2)
                .with_sni("files.pythonhosted.org")
                .by(curl),
        ));
        assert!(
            closed.contains("151.101.0.223:443     files.pythonhosted.org         6 pkts"),
            "the server name when no host: {closed:?}"
        );
        assert!(closed.ends_with("  curl[4711]\n"), "{closed:?}");
        let resolver = FlowKey::udp(
            "10.0.0.1:5353".parse().unwrap(),
            "10.0.0.53:53".parse().unwrap(),
        );
        let lookup = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR)
            .with_answers([
                "151.101.0.223".parse().unwrap(),
                "151.101.64.223".parse().unwrap(),
            ])
            .with_cnames(["dualstack.python.map.fastly.net"]);
        let dns = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::dns(resolver, lookup, 3),
        ));
        assert!(
            dns.ends_with(
                "-> 10.0.0.53:53          pypi.org A NOERROR 151.101.0.223,151.101.64.223 via dualstack.python.map.fastly.net\n"
            ),
            "{dns:?}"
        );
        let escape = text_of(&FlowRecord::event(
            "ebpf",
            FlowEvent::opened(key, 1).named("evil\u{1b}[2J"),
        ));
        assert!(escape.contains("evil\\u{1b}[2J"), "{escape:?}");
    }

    #[test]
    fn text_of_a_loss_says_what_and_where() {
        let line = text_of(&FlowRecord::lost(
            "ebpf",
            LossPoint::RingBufferFull,
            Some(12),
            2,
        ));
        assert_eq!(
            line,
            "        0.000000002  lost    ebpf    12 observations lost (ring buffer full)\n"
        );
        let unknown = text_of(&FlowRecord::lost(
            "nflog",
            LossPoint::NetlinkOverrun,
            None,
            2,
        ));
        assert!(
            unknown
                .contains("an unknown number of observations lost (netlink receive queue overrun)")
        );
    }

    #[test]
    fn text_of_ipv6_and_other_protocols() {
        let key = FlowKey::new(
            "[2001:db8::1]:1000".parse().unwrap(),
            "[::1]:2000".parse().unwrap(),
            132,
        );
        let line = text_of(&FlowRecord::event("mock", FlowEvent::opened(key, 0)));
        assert!(
            line.ends_with("  mock    132       [2001:db8::1]:1000 -> [::1]:2000\n"),
            "{line}"
        );
    }

    #[test]
    fn text_escapes_control_characters_in_names() {
        let key = FlowKey::udp("1.2.3.4:5".parse().unwrap(), "6.7.8.9:53".parse().unwrap());
        let line = text_of(&FlowRecord::event(
            "e\u{1b}[2J\nfake\u{7}",
            FlowEvent::opened(key, 1),
        ));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\n'),
            "{line:?}"
        );
        assert!(
            line.contains("  e\\u{1b}[2J\\u{a}fake\\u{7}  udp"),
            "{line:?}"
        );
        let plain = text_of(&FlowRecord::event("é", FlowEvent::opened(key, 1)));
        assert!(plain.contains("  é       udp"), "{plain:?}");
    }

    /// Takes `room` bytes, then fails with "no space".
    struct Full {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_counts_only_whole_lines_and_drops_the_rest() {
        let key = FlowKey::udp("1.2.3.4:5".parse().unwrap(), "6.7.8.9:53".parse().unwrap());
        let record = FlowRecord::event("ebpf", FlowEvent::opened(key, 1));
        let line = text_of(&record).len();
        let full = Full {
            taken: Vec::new(),
            room: 2 * line + line / 2,
        };
        let mut writer = RecordWriter::new(OutputFormat::Text, full);
        for _ in 0..4 {
            writer.write(&record).unwrap();
        }
        let error = writer.flush().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(writer.records_written(), 2);
        // Nothing is held back for a later flush.
        writer.flush().unwrap();
        assert_eq!(writer.records_written(), 2);
    }

    #[test]
    fn a_full_buffer_is_handed_on_as_it_fills() {
        let key = FlowKey::udp("1.2.3.4:5".parse().unwrap(), "6.7.8.9:53".parse().unwrap());
        let record = FlowRecord::event("ebpf", FlowEvent::opened(key, 1));
        let mut writer = RecordWriter::new(OutputFormat::Json, Vec::new());
        let mut records = 0;
        while writer.records_written() == 0 {
            writer.write(&record).unwrap();
            records += 1;
        }
        assert_eq!(writer.records_written(), records);
        assert!(writer.into_inner().unwrap().len() >= BUFFER_BYTES);
    }
}
