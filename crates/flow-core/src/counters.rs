//! A flow's counters, by direction: what the initiator sent (`src`) and
//! what the responder sent (`dst`).
//!
//! ```
//! use flow_core::counters::{Counters, DirectionCounters};
//! let counters = DirectionCounters::new(Counters::new(10, 1_200), Counters::new(8, 9_000));
//! assert_eq!(counters.total(), Counters::new(18, 10_200));
//! ```

/// Packets and IP-level bytes (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// IP-level bytes.
    pub bytes: u64,
}

impl Counters {
    /// `packets` packets of `bytes` bytes.
    #[must_use]
    pub const fn new(packets: u64, bytes: u64) -> Self {
        Self { packets, bytes }
    }

    /// Both counters added (saturating: counters read from a file may be
    /// anything).
    ///
    /// ```
    /// use flow_core::counters::Counters;
    /// assert_eq!(Counters::new(1, 2).plus(Counters::new(3, 4)), Counters::new(4, 6));
    /// ```
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    /// Whether both counters are at most `other`'s (an earlier reading of
    /// the same flow is).
    ///
    /// ```
    /// use flow_core::counters::Counters;
    /// assert!(Counters::new(3, 100).within(Counters::new(4, 100)));
    /// assert!(!Counters::new(3, 100).within(Counters::new(4, 50)));
    /// ```
    #[must_use]
    pub const fn within(self, other: Self) -> bool {
        self.packets <= other.packets && self.bytes <= other.bytes
    }

    /// What these counters hold beyond `earlier` (zero where they hold
    /// less): the packets and bytes since an earlier reading.
    ///
    /// ```
    /// use flow_core::counters::Counters;
    /// assert_eq!(Counters::new(9, 900).since(Counters::new(4, 100)), Counters::new(5, 800));
    /// ```
    #[must_use]
    pub const fn since(self, earlier: Self) -> Self {
        Self {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// A flow's counters in each direction: `src` what the initiator sent
/// (src → dst), `dst` what the responder sent back (conntrack's original
/// and reply counters; the eBPF backend counts each direction apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DirectionCounters {
    /// Sent by the initiator (the key's `src`).
    pub src: Counters,
    /// Sent by the responder (the key's `dst`).
    pub dst: Counters,
}

impl DirectionCounters {
    /// `src` sent by the initiator, `dst` by the responder.
    #[must_use]
    pub const fn new(src: Counters, dst: Counters) -> Self {
        Self { src, dst }
    }

    /// Both directions together.
    #[must_use]
    pub const fn total(&self) -> Counters {
        self.src.plus(self.dst)
    }

    /// What these counters hold beyond `earlier`, each direction apart.
    ///
    /// ```
    /// use flow_core::counters::{Counters, DirectionCounters};
    /// let then = DirectionCounters::new(Counters::new(1, 100), Counters::new(1, 50));
    /// let now = DirectionCounters::new(Counters::new(3, 300), Counters::new(2, 90));
    /// assert_eq!(now.since(&then), DirectionCounters::new(Counters::new(2, 200), Counters::new(1, 40)));
    /// ```
    #[must_use]
    pub const fn since(&self, earlier: &Self) -> Self {
        Self {
            src: self.src.since(earlier.src),
            dst: self.dst.since(earlier.dst),
        }
    }
}
