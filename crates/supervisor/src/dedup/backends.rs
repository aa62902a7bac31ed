//! A set of backends as one word: a remembered flow keeps a few of these
//! instead of lists of names (a million flows may linger at a time).

/// A set of backends: bit `i` is the backend at index `i` of the
/// correlator's list of known backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Backends(u32);

impl Backends {
    /// The most backends correlated; events of others pass through.
    pub(super) const CAPACITY: usize = 32;

    pub(super) fn one(index: u8) -> Self {
        Self(1 << index)
    }

    pub(super) fn contains(self, index: u8) -> bool {
        self.0 & (1 << index) != 0
    }

    pub(super) fn covers(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub(super) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(super) fn indices(self) -> impl Iterator<Item = u8> {
        (0..32).filter(move |&index| self.contains(index))
    }
}

impl std::ops::BitOr for Backends {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitAnd for Backends {
    type Output = Self;

    fn bitand(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

impl std::ops::Sub for Backends {
    type Output = Self;

    fn sub(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}
