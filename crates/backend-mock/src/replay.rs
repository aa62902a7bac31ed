//! Replays flowtrack's JSON-lines output as scripted sources.

use std::path::{Path, PathBuf};

use flow_core::FlowError;
use flow_core::record::{FlowRecord, RecordItem};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{ScriptedSource, Step};

/// A recorded JSON-lines file (the schema of [`flow_core::record`]), checked
/// and ready to replay.
///
/// [`Replay::open`] reads the whole file once and rejects it at the first
/// malformed line, naming the line and the field, so that nothing is
/// replayed from a broken file. [`Replay::into_sources`] then gives one
/// [`ScriptedSource`] per backend named in the file, each streaming its own
/// lines in file order: replayed output keeps every line's backend.
///
/// ```
/// use flow_backend_mock::Replay;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("flows.jsonl");
/// std::fs::write(&path, "{\"ts_ns\":1,\"kind\":\"lost\",\"backend\":\"ebpf\",\"count\":2}\n").unwrap();
/// let replay = Replay::open(&path).await?;
/// assert_eq!(replay.backends(), ["ebpf"]);
///
/// std::fs::write(&path, "{\"ts_ns\":1,\"kind\":\"opened\",\"backend\":\"ebpf\"}\n").unwrap();
/// let error = Replay::open(&path).await.err().unwrap();
/// assert!(error.to_string().ends_with("flows.jsonl line 1: missing field `proto` (required on \"opened\")"));
/// # Ok::<(), flow_core::FlowError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Replay {
    path: PathBuf,
    backends: Vec<String>,
}

impl Replay {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// [`FlowError::Io`] when it cannot be read; [`FlowError::InvalidInput`]
    /// naming the first malformed line and field.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, FlowError> {
        let path = path.as_ref().to_path_buf();
        let mut backends: Vec<String> = Vec::new();
        let mut records = std::pin::pin!(read_records(path.clone()));
        while let Some(record) = records.try_next().await? {
            if !backends.iter().any(|known| *known == record.backend) {
                backends.push(record.backend.into_owned());
            }
        }
        Ok(Self { path, backends })
    }

    /// The backends named in the file, in order of first appearance.
    #[must_use]
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// One source per backend, each replaying that backend's lines in order.
    /// An empty file gives no sources.
    #[must_use]
    pub fn into_sources(self) -> Vec<ScriptedSource> {
        self.backends
            .into_iter()
            .map(|backend| {
                let wanted = backend.clone();
                let steps = read_records(self.path.clone())
                    .try_filter(move |record| std::future::ready(record.backend == wanted))
                    .map(|record| Step::Item(record.and_then(into_item)));
                ScriptedSource::from_stream(backend, steps)
            })
            .collect()
    }
}

/// A record as the item its backend originally yielded.
fn into_item(record: FlowRecord<'_>) -> Result<flow_core::FlowEvent, FlowError> {
    match record.item {
        RecordItem::Event(event) => Ok(event),
        RecordItem::Lost {
            point,
            count,
            timestamp_ns,
        } => Err(FlowError::lost_at(point, count, timestamp_ns)),
        // RecordItem is non-exhaustive; a kind this version cannot replay is
        // reported rather than dropped.
        other => Err(FlowError::invalid_input(
            "replay",
            format!("cannot replay record {other:?}"),
        )),
    }
}

/// The records of a JSON-lines file, blank lines skipped; the first error
/// (I/O or a malformed line) ends the stream.
fn read_records(
    path: PathBuf,
) -> impl Stream<Item = Result<FlowRecord<'static>, FlowError>> + Send {
    let display = path.display().to_string();
    let opened = {
        let display = display.clone();
        async move {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| FlowError::io(format!("opening {display}"), e))?;
            Ok::<_, FlowError>(BufReader::new(file).lines())
        }
    };
    stream::once(opened)
        .map_ok(move |lines| {
            let display = display.clone();
            stream::try_unfold((lines, 0_u64), move |(mut lines, mut number)| {
                let display = display.clone();
                async move {
                    loop {
                        number += 1;
                        let line = lines.next_line().await.map_err(|e| {
                            FlowError::io(format!("reading {display} line {number}"), e)
                        })?;
                        let Some(line) = line else { return Ok(None) };
                        if line.trim().is_empty() {
                            continue;
                        }
                        let record = FlowRecord::from_json_line(&line).map_err(|e| {
                            FlowError::invalid_input(
                                format!("{display} line {number}"),
                                e.to_string(),
                            )
                        })?;
                        return Ok(Some((record, (lines, number))));
                    }
                }
            })
        })
        .try_flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::{FlowSource, LossPoint};
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
