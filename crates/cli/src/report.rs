//! What `run`, `watch` and `replay` say when they end: the failures, the
//! one-line summary, the per-destination table, and the exit status.

use std::process::ExitCode;

use flow_core::LossPoint;
use flow_core::display::{Count, LossCount};
use flow_supervisor::pipeline::PipelineReport;

use crate::cli::{GroupBy, SummaryFormat};
use crate::diag::say;
use crate::output;

/// Exit status 3: a backend failed mid-run while another went on.
const EXIT_DEGRADED: u8 = 3;

/// Exit status 5: events were observed that could not all be written (the
/// reader closed the pipe, the disk is full).
const EXIT_OUTPUT_INCOMPLETE: u8 = 5;

/// The status flowtrack's own faults impose, if any, most severe first:
/// failure when every backend failed, [`EXIT_OUTPUT_INCOMPLETE`], then
/// [`EXIT_DEGRADED`] when a backend failed while another went on. Prints
/// the failures.
pub(crate) fn fault(report: &PipelineReport, sources: usize) -> Option<ExitCode> {
    for failure in &report.failures {
        say!(
            "flowtrack: error: the {} backend failed: {}",
            failure.backend,
            failure.error
        );
    }
    let failed = report.failures.len();
    if failed > 0 && failed >= sources {
        Some(ExitCode::FAILURE)
    } else if !report.output.is_complete() {
        Some(ExitCode::from(EXIT_OUTPUT_INCOMPLETE))
    } else if failed > 0 {
        Some(ExitCode::from(EXIT_DEGRADED))
    } else {
        None
    }
}

/// Exit status 4: `--fail-on-deny`, and the policy denied something.
const EXIT_DENIED: u8 = 4;

/// Status 4 when `fail_on_deny` and something was denied (in either
/// mode), after the faults of [`fault`].
pub(crate) fn denied(report: &PipelineReport, fail_on_deny: bool) -> Option<ExitCode> {
    (fail_on_deny && report.denied > 0).then(|| ExitCode::from(EXIT_DENIED))
}

/// Denied destinations listed at the end of a run at most.
const DENIALS_LISTED: usize = 20;

/// [`fault`]'s status, else success.
pub(crate) fn exit_code(report: &PipelineReport, sources: usize) -> ExitCode {
    fault(report, sources).unwrap_or(ExitCode::SUCCESS)
}

/// The end of `run` and `watch`: the one-line summary, then the
/// per-destination table in the chosen format. `output` names where the
/// events went.
pub(crate) fn print_summaries(
    report: &PipelineReport,
    format: SummaryFormat,
    group_by: GroupBy,
    output: &str,
) {
    say!("{}", summary(report, output));
    for line in report.denials.to_lines(DENIALS_LISTED) {
        say!("flowtrack: {line}");
    }
    let (empty, text, json) = match group_by {
        GroupBy::Destination => (
            report.destinations.is_empty(),
            report.destinations.to_text(),
            report.destinations.to_json(),
        ),
        GroupBy::Process => (
            report.programs.is_empty(),
            report.programs.to_text(),
            report.programs.to_json(),
        ),
    };
    match format {
        SummaryFormat::Text if !empty => crate::diag::stderr(format_args!("{text}")),
        SummaryFormat::Json => say!("{json}"),
        SummaryFormat::Text | SummaryFormat::Off => {}
    }
}

/// The end of `replay`: nothing, unless its output did not take every line.
pub(crate) fn print_incomplete_output(report: &PipelineReport, output: &str) {
    if let Some(incomplete) = output::incompleteness(&report.output, output) {
        say!("flowtrack: {incomplete}");
    }
}

/// One line: what was observed, what was not, and what of it could not
/// be written.
fn summary(report: &PipelineReport, output: &str) -> String {
    let still_open = report.open_flows();
    let mut line = format!(
        "flowtrack: {} opened, {} closed",
        Count(report.opened, "flow"),
        report.closed
    );
    if still_open > 0 {
        line.push_str(&format!(
            ", {still_open} still open when observation stopped"
        ));
    }
    if report.correlation_evictions > 0 {
        line.push_str(&format!(
            ", {} evicted from the correlation table (duplicates possible)",
            Count(report.correlation_evictions, "flow")
        ));
    }
    if report.denied > 0 {
        line.push_str(&format!(", {} denied", report.denied));
    }
    if report.lookups > 0 {
        line.push_str(&format!(", {}", Count(report.lookups, "lookup")));
    }
    let points = |flows: bool| -> String {
        let points: Vec<String> = report
            .loss_points
            .iter()
            .filter(|point| point.loses_flows() == flows && **point != LossPoint::ExportDropped)
            .map(|point| match remedy(*point) {
                Some(remedy) => format!("{point}: {remedy}"),
                None => point.to_string(),
            })
            .collect();
        points.join("; ")
    };
    let lost = match (report.lost_observations, report.losses_of_unknown_size) {
        (0, 0) => None,
        (0, _) => Some(LossCount(None).to_string()),
        (known, 0) => Some(LossCount(Some(known)).to_string()),
        (known, _) => Some(format!(
            "{} and an unknown number more",
            LossCount(Some(known))
        )),
    };
    match lost {
        Some(lost) => line.push_str(&format!("; LOST {lost} ({})", points(true))),
        None => line.push_str("; nothing lost"),
    }
    if report.names_lost > 0 {
        line.push_str(&format!(
            "; names or processes may be missing: {} ({})",
            Count(report.names_lost, "record"),
            points(false)
        ));
    }
    if report.export_dropped > 0 {
        line.push_str(&format!(
            "; exports dropped {} (export_dropped: the collector misses them, the output has them)",
            Count(report.export_dropped, "flow record")
        ));
    }
    if let Some(incomplete) = output::incompleteness(&report.output, output) {
        line.push_str("; ");
        line.push_str(&incomplete);
    }
    line
}

/// The flag that makes room where observations were lost, if one does.
fn remedy(point: LossPoint) -> Option<&'static str> {
    match point {
        LossPoint::RingBufferFull | LossPoint::PayloadLost => Some("raise --ring-bytes"),
        LossPoint::NameCacheEviction => Some("raise --name-cache-entries"),
        LossPoint::FlowTableEviction => Some("raise --flow-table-entries"),
        _ => None,
    }
}

/// `status 7`, or `signal 9`.
pub(crate) fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown status".to_owned(),
    }
}

/// The child's exit code, or 128 + signal number as a shell reports it.
pub(crate) fn child_exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_supervisor::pipeline::OutputReport;

    #[test]
    fn the_summary_says_what_was_observed_and_what_not_written() {
        let report = PipelineReport {
            opened: 200,
            closed: 200,
            events: 400,
            output: OutputReport {
                written: 2,
                unwritten: 398,
                error: Some(std::io::ErrorKind::BrokenPipe.into()),
            },
            ..PipelineReport::default()
        };
        assert_eq!(
            summary(&report, "stdout"),
            "flowtrack: 200 flows opened, 200 closed; nothing lost; OUTPUT INCOMPLETE: \
             2 of 400 lines written to stdout, 398 not (closed by its reader)"
        );
        assert_eq!(
            fault(&report, 1).map(|code| format!("{code:?}")),
            Some(format!("{:?}", ExitCode::from(5)))
        );
    }

    #[test]
    fn records_exports_dropped_are_said_apart_from_lost_observations() {
        let report = PipelineReport {
            opened: 3,
            closed: 3,
            loss_items: 2,
            export_dropped: 12,
            loss_points: vec![LossPoint::ExportDropped],
            ..PipelineReport::default()
        };
        assert_eq!(
            summary(&report, "stdout"),
            "flowtrack: 3 flows opened, 3 closed; nothing lost; exports dropped 12 flow records \
             (export_dropped: the collector misses them, the output has them)"
        );
        assert!(fault(&report, 1).is_none());
    }
}
