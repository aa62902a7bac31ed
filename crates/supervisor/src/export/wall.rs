//! From the contract's CLOCK_MONOTONIC stamps to wall-clock milliseconds,
//! which IPFIX carries (`flowStartMilliseconds`, `flowEndMilliseconds`).
//!
//! The offset between the two clocks is taken as the midpoint of two
//! CLOCK_REALTIME reads around one CLOCK_MONOTONIC read, and taken again
//! whenever the exporter resends its templates, so that a clock step (NTP,
//! an operator) is followed within that interval: records exported after a
//! step carry the new wall-clock time, earlier ones the old.

use std::time::{SystemTime, UNIX_EPOCH};

use flow_core::clock::monotonic_now_ns;

/// The offset of CLOCK_REALTIME from CLOCK_MONOTONIC, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    /// The offset now.
    ///
    /// ```
    /// use flow_supervisor::export::wall::WallClock;
    /// let clock = WallClock::now();
    /// let now_ms = clock.ms(flow_core::clock::monotonic_now_ns());
    /// let system_ms = std::time::SystemTime::now()
    ///     .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    /// assert!(now_ms.abs_diff(system_ms) < 1_000);
    /// ```
    #[must_use]
    pub fn now() -> Self {
        let before = realtime_ns();
        let monotonic = i128::from(monotonic_now_ns());
        let after = realtime_ns();
        Self {
            offset_ns: (before + after) / 2 - monotonic,
        }
    }

    /// The wall-clock time of the monotonic stamp `monotonic_ns`, in
    /// milliseconds since the UNIX epoch (0 before it).
    #[must_use]
    pub fn ms(&self, monotonic_ns: u64) -> u64 {
        self.ns(monotonic_ns) / 1_000_000
    }

    /// The wall-clock time of the monotonic stamp `monotonic_ns`, in
    /// nanoseconds since the UNIX epoch (0 before it), as OpenTelemetry
    /// carries it.
    #[must_use]
    pub fn ns(&self, monotonic_ns: u64) -> u64 {
        let wall = i128::from(monotonic_ns) + self.offset_ns;
        u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
    }

    /// Seconds since the UNIX epoch now, as an IPFIX header's export time.
    #[must_use]
    pub fn export_secs() -> u32 {
        u32::try_from(realtime_ns() / 1_000_000_000).unwrap_or(u32::MAX)
    }
}

/// CLOCK_REALTIME in nanoseconds since the epoch (negative before it).
fn realtime_ns() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}
