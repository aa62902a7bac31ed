//! The one clock of the contract: CLOCK_MONOTONIC, in nanoseconds.
//!
//! `bpf_ktime_get_ns()` in the kernel and `clock_gettime(CLOCK_MONOTONIC)` in
//! userspace read the same clock, so stamps from every backend compare
//! directly. Wall-clock time is never used for [`FlowEvent::timestamp_ns`].
//!
//! [`FlowEvent::timestamp_ns`]: crate::FlowEvent::timestamp_ns

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds per second, for converting stamps to seconds.
///
/// ```
/// use flow_core::clock::NANOS_PER_SEC;
/// assert_eq!(2_500_000_000 / NANOS_PER_SEC, 2);
/// ```
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The current CLOCK_MONOTONIC time in nanoseconds.
///
/// ```
/// let a = flow_core::clock::monotonic_now_ns();
/// let b = flow_core::clock::monotonic_now_ns();
/// assert!(b >= a);
/// ```
#[must_use]
pub fn monotonic_now_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    // CLOCK_MONOTONIC is never negative; the conversion cannot fail in
    // practice, and saturating keeps this function total.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos)
}
