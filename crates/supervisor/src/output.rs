//! Writing records for people (`text`) and machines (`json`).

use std::io::{self, Write};

use flow_core::display::{LossCount, Seconds};
use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowEventKind, protocol};

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

/// Writes records in one format to a buffered writer.
///
/// ```
/// use flow_core::{FlowEvent, FlowKey};
/// use flow_core::record::FlowRecord;
/// use flow_supervisor::output::{OutputFormat, RecordWriter};
///
/// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
/// let mut writer = RecordWriter::new(OutputFormat::Text, Vec::new());
/// writer.write(&FlowRecord::event("ebpf", FlowEvent::closed(key, 6, 400, 1_500_000_000)))?;
/// let text = String::from_utf8(writer.into_inner()?)?;
/// assert_eq!(
///     text,
///     concat!(
///         "        1.500000000  closed  ebpf    tcp           10.0.0.1:40000 -> 10.0.0.2:80          ",
///         "       6 pkts        400 B\n",
///     )
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RecordWriter<W: Write> {
    format: OutputFormat,
    writer: io::BufWriter<W>,
}

impl<W: Write> RecordWriter<W> {
    /// A writer of `format` records to `writer`, buffered.
    pub fn new(format: OutputFormat, writer: W) -> Self {
        Self {
            format,
            writer: io::BufWriter::with_capacity(64 * 1024, writer),
        }
    }

    /// Writes one record (buffered: call [`RecordWriter::flush`]).
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn write(&mut self, record: &FlowRecord<'_>) -> io::Result<()> {
        match self.format {
            OutputFormat::Json => record.write_json_line(&mut self.writer),
            OutputFormat::Text => write_text_line(record, &mut self.writer),
        }
    }

    /// Flushes buffered records to the underlying writer.
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// The error of the final flush.
    pub fn into_inner(self) -> io::Result<W> {
        self.writer
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
    }
}

/// `   1.500000000  closed  ebpf    tcp   10.0.0.1:40000 -> 10.0.0.2:80   6 pkts  400 B  fin`
fn write_text_line(record: &FlowRecord<'_>, out: &mut impl Write) -> io::Result<()> {
    write!(out, "{:>19}", Seconds(record.timestamp_ns()))?;
    write!(out, "  {:<6}  {:<6}  ", record.kind_name(), record.backend)?;
    match &record.item {
        RecordItem::Event(event) => {
            let key = &event.key;
            write!(
                out,
                "{:<6} {:>21} -> ",
                protocol::Display(key.protocol),
                key.src()
            )?;
            match event.kind {
                FlowEventKind::Closed {
                    pkt_count,
                    byte_count,
                } => {
                    write!(
                        out,
                        "{:<21} {pkt_count:>7} pkts {byte_count:>10} B",
                        key.dst()
                    )?;
                    if let Some(reason) = event.close_reason {
                        write!(out, "  {reason}")?;
                    }
                }
                _ => write!(out, "{}", key.dst())?,
            }
        }
        RecordItem::Lost { point, count, .. } => {
            write!(out, "{} lost ({point})", LossCount(*count))?;
        }
        // RecordItem is non-exhaustive; show what a newer kind holds rather
        // than dropping it.
        other => write!(out, "{other:?}")?,
    }
    out.write_all(b"\n")
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
            closed.because(CloseReason::Reset),
        ));
        assert_eq!(
            known,
            "        1.500000000  closed  ebpf    tcp           10.0.0.1:40000 -> 10.0.0.2:80                 6 pkts        400 B  reset\n"
        );
        let unknown = text_of(&FlowRecord::event("ebpf", closed));
        assert_eq!(unknown, known.replace("  reset", ""));
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
}
