//! Where a command's events go: its default stream, or `-o FILE`; and how
//! an output that could not take them all is described.

use std::io::{self, Write};

use anyhow::Result;
use flow_core::display::Count;
use flow_core::record::JsonOptions;
use flow_supervisor::output::RecordWriter;
use flow_supervisor::pipeline::OutputReport;

use crate::cli::OutputArgs;
use crate::safe_file::{self, WholeLines};

/// The stream a command writes events to when no `--output` is given.
#[derive(Clone, Copy)]
pub(crate) enum DefaultStream {
    Stdout,
    Stderr,
}

/// A command's event output.
pub(crate) struct Output {
    /// Its records.
    pub(crate) writer: RecordWriter<Box<dyn Write + Send>>,
    /// What to call it in messages: `stdout`, `stderr`, or the file.
    pub(crate) name: String,
}

impl Output {
    /// The output `args` name, else `default`.
    pub(crate) fn open(args: &OutputArgs, default: DefaultStream) -> Result<Self> {
        let (sink, name): (Box<dyn Write + Send>, String) = match (&args.output, default) {
            (Some(path), _) => {
                let file = safe_file::create(path)?;
                let name = path.display().to_string();
                if safe_file::is_regular(&file) {
                    (Box::new(WholeLines::new(file)?), name)
                } else {
                    (Box::new(file), name)
                }
            }
            (None, DefaultStream::Stdout) => (Box::new(io::stdout()), "stdout".to_owned()),
            (None, DefaultStream::Stderr) => (Box::new(io::stderr()), "stderr".to_owned()),
        };
        Ok(Self {
            writer: RecordWriter::new(args.format, sink)
                .with_json_options(JsonOptions::default().cmdline(args.cmdline)),
            name,
        })
    }
}

/// `OUTPUT INCOMPLETE: 2 of 400 lines written to stdout, 398 not (closed
/// by its reader)`, when the output did not take every line.
pub(crate) fn incompleteness(report: &OutputReport, name: &str) -> Option<String> {
    let error = report.error.as_ref()?;
    let why = match error.kind() {
        io::ErrorKind::BrokenPipe => "closed by its reader".to_owned(),
        _ => error.to_string(),
    };
    Some(format!(
        "OUTPUT INCOMPLETE: {} of {} written to {name}, {} not ({why})",
        report.written,
        Count(report.lines(), "line"),
        report.unwritten
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_much_was_written_where_and_why_not() {
        let report = OutputReport {
            written: 2,
            unwritten: 398,
            error: Some(io::ErrorKind::BrokenPipe.into()),
        };
        assert_eq!(
            incompleteness(&report, "stdout").unwrap(),
            "OUTPUT INCOMPLETE: 2 of 400 lines written to stdout, 398 not (closed by its reader)"
        );
        let full = OutputReport {
            written: 0,
            unwritten: 1,
            error: Some(io::Error::from_raw_os_error(28)),
        };
        assert_eq!(
            incompleteness(&full, "/mnt/out.jsonl").unwrap(),
            "OUTPUT INCOMPLETE: 0 of 1 line written to /mnt/out.jsonl, 1 not (No space left on device (os error 28))"
        );
        assert_eq!(incompleteness(&OutputReport::default(), "stdout"), None);
    }
}
