//! `flowtrack policy suggest`: a policy file from a recorded run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use flow_policy::Suggestion;
use flow_supervisor::mock::Replay;

use crate::cli::SuggestArgs;
use crate::safe_file;

/// Reads the recording whole (a malformed line is an error naming it),
/// then writes the suggested policy to `-o FILE` (created as `-o` creates
/// event files) or stdout.
pub(crate) async fn suggest(args: SuggestArgs) -> Result<ExitCode> {
    let replay = Replay::open(&args.events).await?;
    let mut suggestion = Suggestion::default();
    for record in replay.into_records() {
        suggestion.record(&record);
    }
    let policy = suggestion.to_toml(&args.events.display().to_string());
    match &args.output {
        Some(path) => {
            let mut file = safe_file::create(path)?;
            file.write_all(policy.as_bytes())
                .and_then(|()| file.flush())
                .with_context(|| format!("cannot write the policy to {}", path.display()))?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(policy.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write the policy to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
