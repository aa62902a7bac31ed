//! When a record wakes flowtrack's reader. Waking it costs more than the
//! work a record brings (a sleep and a wakeup of its thread: on the
//! storms' machines, as much as `conntrack -E` spends per event), so a
//! record that can wait a few milliseconds (a close, a DNS answer, a
//! ClientHello) is written without a wakeup while one happened lately: the
//! reader reads it with the next record that wakes it (an open: a lookup's
//! answer comes before the connection that uses it, and is read, in order,
//! before it), or with the catch-up read it makes 5 ms after each read that
//! found records (`CATCH_UP` in the reader). A record the reader must see
//! at once (an open, a denial) forces a wakeup, unless one is already due:
//! the ring wakes the reader by itself only when it has read everything,
//! which a record written without a wakeup and still unread prevents.

use aya_ebpf::bindings::{BPF_RB_CONS_POS, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_PROD_POS};
use aya_ebpf::macros::map;
use aya_ebpf::maps::Array;

use crate::EVENTS;

/// The last record that woke the reader.
#[repr(C)]
struct LastWakeup {
    /// The ring's producer position just past it.
    up_to: u64,
    /// When (`bpf_ktime_get_ns`).
    at_ns: u64,
}

#[map(name = "LAST_WAKEUP")]
static LAST_WAKEUP: Array<LastWakeup> = Array::with_max_entries(1, 0);

const FORCE: u64 = BPF_RB_FORCE_WAKEUP as u64;
const QUIET: u64 = BPF_RB_NO_WAKEUP as u64;

/// How long after a wakeup a record that can wait is written without one:
/// well within the reader's catch-up delay (5 ms), which starts when it
/// reads the record that woke it, so the catch-up reads what came since.
const QUIET_FOR_NS: u64 = 2_000_000;

/// Submit flags of a record the reader must see at once (an open, a
/// denial), once it is written; `now` is its time (`bpf_ktime_get_ns`).
#[inline(always)]
pub(crate) fn urgent(now: u64) -> u64 {
    flags(false, now)
}

/// Submit flags of a record that can wait a few milliseconds (a close, a
/// DNS answer, a ClientHello), once it is written; `now` is its time.
#[inline(always)]
pub(crate) fn can_wait(now: u64) -> u64 {
    flags(true, now)
}

/// No wakeup when one is due (the reader has not read past the last record
/// that woke it: woken, it reads the whole ring; a record it reached before
/// this one was submitted, and then slept, is read by its catch-up read),
/// nor for a record that can wait after a recent wakeup; else a forced one,
/// remembered.
#[inline(always)]
fn flags(can_wait: bool, now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return FORCE;
    };
    let produced = EVENTS.query(u64::from(BPF_RB_PROD_POS));
    let consumed = EVENTS.query(u64::from(BPF_RB_CONS_POS));
    // SAFETY: the map's only value, valid for the program's run; CPUs race
    // on it harmlessly (at worst one wakeup too many, or a record read by
    // the catch-up read).
    unsafe {
        let due = consumed < (*last).up_to;
        let recent = now.saturating_sub((*last).at_ns) < QUIET_FOR_NS;
        if due || (can_wait && recent) {
            return QUIET;
        }
        (*last).up_to = produced;
        (*last).at_ns = now;
    }
    FORCE
}
