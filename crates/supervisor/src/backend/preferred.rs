//! `--backend auto`: the first backend that starts, and why the others did
//! not.

use async_trait::async_trait;
use flow_core::{FlowError, FlowSource, FlowStream};

/// A source that starts the first of its candidates able to run (eBPF,
/// then nflog), remembering why the others could not. Its name is the
/// chosen backend's once started (`auto` before).
///
// The example uses the mock sources (feature `mock`).
#[cfg_attr(feature = "mock", doc = "```")]
#[cfg_attr(not(feature = "mock"), doc = "```ignore")]
/// use flow_supervisor::backend::Preferred;
/// use flow_supervisor::FlowSource;
/// use flow_supervisor::mock::MockFlowSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut refusing = MockFlowSource::new();
/// refusing.expect_name().return_const("ebpf".to_owned());
/// refusing.expect_start().returning(|| Err(flow_supervisor::FlowError::unavailable("ebpf", "no CAP_BPF")));
/// let working = flow_supervisor::mock::ScriptedSource::from_events("nflog", []);
/// let mut auto = Preferred::new(vec![Box::new(refusing), Box::new(working)], Vec::new());
/// let _stream = auto.start().await.unwrap();
/// assert_eq!(auto.name(), "nflog");
/// assert_eq!(auto.decision(), Some("using the nflog backend (auto: ebpf cannot run here: no CAP_BPF)"));
/// # }
/// ```
pub struct Preferred {
    candidates: Vec<Box<dyn FlowSource>>,
    refused: Vec<(String, String)>,
    chosen: Option<Box<dyn FlowSource>>,
    decision: Option<String>,
}

impl Preferred {
    /// Tries `candidates` in order; `refused` lists backends that could not
    /// even be set up, with why (they count as tried first).
    #[must_use]
    pub fn new(candidates: Vec<Box<dyn FlowSource>>, refused: Vec<(String, String)>) -> Self {
        Self {
            candidates,
            refused,
            chosen: None,
            decision: None,
        }
    }

    /// After a successful start: which backend runs and why the others do
    /// not, as one line.
    #[must_use]
    pub fn decision(&self) -> Option<&str> {
        self.decision.as_deref()
    }
}

impl std::fmt::Debug for Preferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preferred")
            .field("chosen", &self.chosen.as_ref().map(|source| source.name()))
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// Why a backend is unavailable, without repeating its name.
pub(crate) fn reason(error: &FlowError) -> String {
    match error {
        FlowError::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl FlowSource for Preferred {
    fn name(&self) -> &str {
        self.chosen.as_ref().map_or("auto", |source| source.name())
    }

    async fn start(&mut self) -> Result<FlowStream, FlowError> {
        let mut candidates = std::mem::take(&mut self.candidates).into_iter();
        while let Some(mut candidate) = candidates.next() {
            match candidate.start().await {
                Ok(stream) => {
                    let fallbacks: Vec<String> =
                        candidates.map(|source| source.name().to_owned()).collect();
                    self.decision = Some(decision(candidate.name(), &self.refused, &fallbacks));
                    self.chosen = Some(candidate);
                    return Ok(stream);
                }
                Err(error) => self
                    .refused
                    .push((candidate.name().to_owned(), reason(&error))),
            }
        }
        let why: Vec<String> = self
            .refused
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        Err(FlowError::unavailable(
            "auto",
            format!("no backend can run here: {}", why.join("; ")),
        ))
    }

    fn finish(&mut self) -> bool {
        self.chosen.as_mut().is_some_and(|source| source.finish())
    }
}

/// `using the nflog backend (auto: ebpf cannot run here: …)`.
fn decision(chosen: &str, refused: &[(String, String)], fallbacks: &[String]) -> String {
    let why = if refused.is_empty() {
        match fallbacks {
            [] => "the only backend here".to_owned(),
            _ => format!("the first choice; {} is the fallback", fallbacks.join(", ")),
        }
    } else {
        refused
            .iter()
            .map(|(name, why)| format!("{name} cannot run here: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("using the {chosen} backend (auto: {why})")
}
