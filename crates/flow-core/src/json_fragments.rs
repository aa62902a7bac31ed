//! The JSON of the parts of a line that many lines share, kept once
//! written: a process's fields (`"pid":…,"comm":…,"exe":…`), a
//! destination's name (`"host":…`), and the `backend` and `backends`
//! fields of an event line.
//!
//! An event's process is shared, behind one `Arc`, by every event of its
//! flows, a name by every flow to its addresses, and a run has few
//! backends; yet writing their fields again for
//! each line (numbers formatted, strings scanned for characters to escape,
//! a dozen small copies) was a third of a line's cost in the merge + JSON
//! benchmark with names and processes. Here a line that meets the same
//! process, name or backends again copies their JSON in one piece.
//!
//! No crate keeps such fragments: they are the schema's own.

use std::borrow::Cow;
use std::sync::Arc;

use crate::arc_memo::ArcMemo;

/// Sets of backends whose fields are kept, at most (the oldest is
/// forgotten first).
const BACKEND_SETS: usize = 8;

/// The JSON of the shared values (processes, names) written last, by
/// their `Arc` ([`ArcMemo`]).
#[derive(Debug)]
pub(crate) struct ArcFragments<T: ?Sized>(ArcMemo<T, Box<[u8]>>);

impl<T: ?Sized> Default for ArcFragments<T> {
    fn default() -> Self {
        Self(ArcMemo::default())
    }
}

impl<T: ?Sized> ArcFragments<T> {
    /// Appends the JSON of `value` to `out`: as `write` wrote it the last
    /// time this value (this `Arc`) was written, else by `write` now.
    pub(crate) fn append(
        &mut self,
        value: &Arc<T>,
        out: &mut Vec<u8>,
        write: impl FnOnce(&T, &mut Vec<u8>),
    ) {
        if let Some(json) = self.0.get(value) {
            out.extend_from_slice(json);
            return;
        }
        let start = out.len();
        write(value, out);
        self.0.insert(value, out[start..].into());
    }
}

/// The JSON of one set of backends: a line's `backend`, its
/// `also_seen_by`, and the bytes written for them.
#[derive(Debug)]
struct BackendFragment {
    backend: Box<str>,
    also_seen_by: Box<[Box<str>]>,
    json: Box<[u8]>,
}

impl BackendFragment {
    fn is_for(&self, backend: &str, also_seen_by: &[Cow<'_, str>]) -> bool {
        *self.backend == *backend
            && self.also_seen_by.len() == also_seen_by.len()
            && self
                .also_seen_by
                .iter()
                .zip(also_seen_by)
                .all(|(kept, other)| **kept == **other)
    }
}

/// The JSON of the sets of backends written last.
#[derive(Debug, Default)]
pub(crate) struct BackendFragments {
    kept: Vec<BackendFragment>,
    /// The entry used last, looked at first: lines come in runs from
    /// one backend (the merge takes a batch of each in turn).
    last: usize,
    /// The entry to forget next, when all are taken.
    next: usize,
}

impl BackendFragments {
    /// Appends the fields of `backend` and `also_seen_by` to `out`: as
    /// `write` wrote them the last time the same backends were written,
    /// else by `write` now.
    pub(crate) fn append(
        &mut self,
        backend: &str,
        also_seen_by: &[Cow<'_, str>],
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let found = match self.kept.get(self.last) {
            Some(last) if last.is_for(backend, also_seen_by) => Some(self.last),
            _ => self
                .kept
                .iter()
                .position(|kept| kept.is_for(backend, also_seen_by)),
        };
        if let Some(index) = found {
            self.last = index;
            out.extend_from_slice(&self.kept[index].json);
            return;
        }
        let start = out.len();
        write(out);
        let fragment = BackendFragment {
            backend: backend.into(),
            also_seen_by: also_seen_by.iter().map(|other| (**other).into()).collect(),
            json: out[start..].into(),
        };
        if self.kept.len() < BACKEND_SETS {
            self.last = self.kept.len();
            self.kept.push(fragment);
        } else {
            self.last = self.next;
            self.kept[self.next] = fragment;
            self.next = (self.next + 1) % BACKEND_SETS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Process;

    fn pid_writer(calls: &mut u32) -> impl FnOnce(&Process, &mut Vec<u8>) + '_ {
        move |process, out| {
            *calls += 1;
            out.extend_from_slice(format!(",\"pid\":{}", process.pid.unwrap_or(0)).as_bytes());
        }
    }

    #[test]
    fn a_process_met_again_is_copied_and_another_is_written() {
        let mut fragments = ArcFragments::<Process>::default();
        let curl = Arc::new(Process::new(7));
        let other_curl = Arc::new(Process::new(8));
        let mut calls = 0;
        let mut out = b"{".to_vec();
        fragments.append(&curl, &mut out, pid_writer(&mut calls));
        fragments.append(&curl, &mut out, pid_writer(&mut calls));
        fragments.append(&other_curl, &mut out, pid_writer(&mut calls));
        assert_eq!(out, b"{,\"pid\":7,\"pid\":7,\"pid\":8");
        assert_eq!(calls, 2, "the second line of process 7 is a copy");
    }

    #[test]
    fn an_equal_process_behind_another_arc_is_written_again() {
        let mut fragments = ArcFragments::<Process>::default();
        let mut calls = 0;
        let mut out = Vec::new();
        for _ in 0..2 {
            fragments.append(&Arc::new(Process::new(7)), &mut out, pid_writer(&mut calls));
        }
        assert_eq!(out, b",\"pid\":7,\"pid\":7");
        assert_eq!(calls, 2);
    }

    #[test]
    fn backends_are_kept_by_name_and_by_all_of_them() {
        let mut fragments = BackendFragments::default();
        let mut calls = 0;
        let mut out = Vec::new();
        let nflog = [Cow::Borrowed("nflog")];
        for (backend, also) in [
            ("ebpf", &[][..]),
            ("ebpf", &nflog[..]),
            ("ebpf", &[][..]),
            ("ebpf", &nflog[..]),
            ("nflog", &[][..]),
        ] {
            fragments.append(backend, also, &mut out, |out| {
                calls += 1;
                out.extend_from_slice(format!("[{backend}+{}]", also.len()).as_bytes());
            });
        }
        assert_eq!(out, b"[ebpf+0][ebpf+1][ebpf+0][ebpf+1][nflog+0]");
        assert_eq!(calls, 3);
    }

    #[test]
    fn beyond_the_bound_the_oldest_backends_are_forgotten() {
        let mut fragments = BackendFragments::default();
        let mut calls = 0;
        let mut out = Vec::new();
        let names: Vec<String> = (0..=BACKEND_SETS).map(|n| format!("b{n}")).collect();
        for name in names.iter().chain(&names[..1]) {
            fragments.append(name, &[], &mut out, |out| {
                calls += 1;
                out.extend_from_slice(name.as_bytes());
            });
        }
        assert_eq!(
            calls,
            BACKEND_SETS + 2,
            "b0 was forgotten for b8, and written again"
        );
        assert_eq!(fragments.kept.len(), BACKEND_SETS);
    }
}
