//! Replays flowtrack's JSON-lines output: read once and checked, then
//! handed on in file order.

use std::fmt::Display;
use std::path::Path;

use flow_core::FlowError;
use flow_core::record::{FlowRecord, RecordItem};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::{ScriptedSource, Step};

/// A recorded JSON-lines file (the schema of [`flow_core::record`]), read
/// and checked, held in memory ready to replay.
///
/// [`Replay::open`] reads the input once — a file, a pipe or a FIFO — and
/// rejects it at the first malformed line, naming the line and the field,
/// so that nothing is replayed from a broken file. Backend names must be
/// printable: a name holding control characters (an escape sequence, a
/// newline) is malformed. [`Replay::into_records`] then gives the records
/// in file order, each with its backend and the other backends that saw
/// it; [`Replay::into_sources`] one [`ScriptedSource`] per backend.
///
/// ```
/// use flow_backend_mock::Replay;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("flows.jsonl");
/// std::fs::write(&path, "{\"ts_ns\":1,\"kind\":\"lost\",\"backend\":\"ebpf\",\"count\":2}\n").unwrap();
/// let replay = Replay::open(&path).await?;
/// assert_eq!(replay.backends(), ["ebpf"]);
/// assert_eq!(replay.into_records()[0].timestamp_ns(), 1);
///
/// std::fs::write(&path, "{\"ts_ns\":1,\"kind\":\"opened\",\"backend\":\"ebpf\"}\n").unwrap();
/// let error = Replay::open(&path).await.err().unwrap();
/// assert!(error.to_string().ends_with("flows.jsonl line 1: missing field `proto` (required on \"opened\")"));
/// # Ok::<(), flow_core::FlowError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Replay {
    records: Vec<FlowRecord<'static>>,
    backends: Vec<String>,
}

impl Replay {
    /// Reads and checks the file at `path` (also a pipe, a FIFO or
    /// `/dev/stdin`: it is read once).
    ///
    /// # Errors
    /// [`FlowError::Io`] when it cannot be read; [`FlowError::InvalidInput`]
    /// naming the first malformed line and field.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, FlowError> {
        let path = path.as_ref();
        let display = path.display();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| FlowError::io(format!("opening {display}"), e))?;
        Self::read(file, display).await
    }

    /// Reads and checks JSON lines from `reader`, called `name` in errors.
    ///
    /// # Errors
    /// As [`Replay::open`].
    pub async fn read(
        reader: impl AsyncRead + Unpin,
        name: impl Display,
    ) -> Result<Self, FlowError> {
        let mut lines = BufReader::new(reader).lines();
        let mut replay = Self::default();
        let mut number = 0_u64;
        loop {
            number += 1;
            let line = lines
                .next_line()
                .await
                .map_err(|e| FlowError::io(format!("reading {name} line {number}"), e))?;
            let Some(line) = line else {
                return Ok(replay);
            };
            if line.trim().is_empty() {
                continue;
            }
            let record = parse(&line)
                .map_err(|e| FlowError::invalid_input(format!("{name} line {number}"), e))?;
            if !replay.backends.iter().any(|known| *known == record.backend) {
                replay.backends.push(record.backend.clone().into_owned());
            }
            replay.records.push(record);
        }
    }

    /// The backends named in the file (`backend` fields), in order of
    /// first appearance.
    #[must_use]
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The records, in file order.
    #[must_use]
    pub fn into_records(self) -> Vec<FlowRecord<'static>> {
        self.records
    }

    /// One source per backend, each replaying that backend's lines in
    /// order (without the other backends a line lists: a source yields
    /// what it observed). An empty file gives no sources.
    #[must_use]
    pub fn into_sources(self) -> Vec<ScriptedSource> {
        self.backends
            .iter()
            .map(|backend| {
                let steps: Vec<Step> = self
                    .records
                    .iter()
                    .filter(|record| record.backend == *backend)
                    .map(|record| Step::Item(into_item(record)))
                    .collect();
                ScriptedSource::from_steps(backend.clone(), steps)
            })
            .collect()
    }
}

/// One line as a record whose backend names are printable.
fn parse(line: &str) -> Result<FlowRecord<'static>, String> {
    let record = FlowRecord::from_json_line(line).map_err(|e| e.to_string())?;
    if has_control(&record.backend) {
        return Err(unprintable("backend", &record.backend));
    }
    if let Some(other) = record.also_seen_by.iter().find(|name| has_control(name)) {
        return Err(unprintable("backends", other));
    }
    Ok(record)
}

fn has_control(name: &str) -> bool {
    name.chars().any(char::is_control)
}

fn unprintable(field: &str, name: &str) -> String {
    format!("field `{field}`: the backend name {name:?} holds control characters")
}

/// A record as the item its backend originally yielded.
fn into_item(record: &FlowRecord<'_>) -> Result<flow_core::FlowEvent, FlowError> {
    match &record.item {
        RecordItem::Event(event) => Ok(event.clone().into_owned()),
        RecordItem::Lost {
            point,
            count,
            timestamp_ns,
        } => Err(FlowError::lost_at(*point, *count, *timestamp_ns)),
        // RecordItem is non-exhaustive; a kind this version cannot replay is
        // reported rather than dropped.
        other => Err(FlowError::invalid_input(
            "replay",
            format!("cannot replay record {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::{FlowSource, LossPoint};
    use futures::StreamExt;
    use std::io::Write;

    fn file_with(lines: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(lines.as_bytes()).unwrap();
        file
    }

    const TWO_BACKENDS: &str = concat!(
        r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":80,"backend":"ebpf"}"#,
        "\n",
        "\n",
        r#"{"ts_ns":2,"kind":"lost","backend":"nflog","count":null,"point":"sequence_gap"}"#,
        "\n",
        r#"{"ts_ns":3,"kind":"closed","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":80,"packets":6,"bytes":400,"backend":"ebpf"}"#,
        "\n",
    );

    #[tokio::test]
    async fn one_source_per_backend_in_file_order() {
        let file = file_with(TWO_BACKENDS);
        let replay = Replay::open(file.path()).await.unwrap();
        assert_eq!(replay.backends(), ["ebpf", "nflog"]);
        let mut sources = replay.into_sources();
        let ebpf: Vec<_> = sources[0].start().await.unwrap().collect().await;
        let stamps: Vec<_> = ebpf
            .iter()
            .map(|item| item.as_ref().unwrap().timestamp_ns)
            .collect();
        assert_eq!(stamps, [1, 3]);
        let nflog: Vec<_> = sources[1].start().await.unwrap().collect().await;
        assert!(matches!(
            nflog[..],
            [Err(FlowError::Lost {
                point: LossPoint::SequenceGap,
                count: None,
                timestamp_ns: 2
            })]
        ));
    }

    #[tokio::test]
    async fn an_empty_file_has_no_sources() {
        let file = file_with("");
        assert!(
            Replay::open(file.path())
                .await
                .unwrap()
                .into_sources()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn names_the_line_and_field() {
        let file = file_with(&format!("{TWO_BACKENDS}{{\"ts_ns\":\"x\"}}\n"));
        let error = Replay::open(file.path()).await.unwrap_err();
        let expected = format!(
            "{} line 5: field `ts_ns`: invalid type: string \"x\", expected u64 (column 12)",
            file.path().display()
        );
        assert_eq!(error.to_string(), expected);
    }

    #[tokio::test]
    async fn records_keep_file_order_and_every_backend() {
        let both = concat!(
            r#"{"ts_ns":2,"kind":"opened","proto":"udp","src":"10.0.0.1","sport":1,"dst":"10.0.0.2","dport":53,"backend":"nflog","backends":["nflog"]}"#,
            "\n",
            r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":2,"dst":"10.0.0.2","dport":80,"backend":"ebpf","backends":["ebpf","nflog"]}"#,
            "\n",
        );
        let replay = Replay::read(both.as_bytes(), "both").await.unwrap();
        assert_eq!(replay.backends(), ["nflog", "ebpf"]);
        let records = replay.into_records();
        let stamps: Vec<u64> = records.iter().map(FlowRecord::timestamp_ns).collect();
        assert_eq!(stamps, [2, 1]);
        assert_eq!(records[1].also_seen_by, ["nflog"]);
    }

    #[tokio::test]
    async fn a_pipe_is_read_once() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let feed = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            writer.write_all(TWO_BACKENDS.as_bytes()).await.unwrap();
        });
        let replay = Replay::read(reader, "pipe").await.unwrap();
        feed.await.unwrap();
        assert_eq!(replay.into_records().len(), 3);
    }

    #[tokio::test]
    async fn backend_names_with_control_characters_are_refused() {
        let evil = r#"{"ts_ns":1,"kind":"lost","backend":"x\u001b[2J\nflowtrack: nothing lost","count":1}"#;
        let error = Replay::read(evil.as_bytes(), "evil").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"evil line 1: field `backend`: the backend name "x\u{1b}[2J\nflowtrack: nothing lost" holds control characters"#
        );
        let listed = r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":2,"dst":"10.0.0.2","dport":80,"backend":"ebpf","backends":["ebpf","\u0007"]}"#;
        let error = Replay::read(listed.as_bytes(), "evil").await.unwrap_err();
        assert!(error.to_string().contains("field `backends`"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_file_is_an_io_error() {
        let error = Replay::open("/nonexistent/flows.jsonl").await.unwrap_err();
        assert!(matches!(error, FlowError::Io { .. }));
        assert!(
            error
                .to_string()
                .starts_with("opening /nonexistent/flows.jsonl: ")
        );
    }
}
