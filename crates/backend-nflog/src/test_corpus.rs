//! The committed fuzz corpus as test input: kernel messages captured by
//! `fuzz/seed_netlink.py` (`real-*`), and inputs the fuzzer once found
//! crashing (`crash-*`).

use std::path::PathBuf;

use proptest::prelude::*;

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(path).unwrap())
        })
        .collect()
}

/// The captured kernel datagrams of `target`.
pub(crate) fn real(target: &str) -> Vec<Vec<u8>> {
    files(target)
        .into_iter()
        .filter(|(name, _)| name.starts_with("real-"))
        .map(|(_, bytes)| bytes)
        .collect()
}

/// Every input of `target`, and how many are crash regressions.
pub(crate) fn all(target: &str) -> (Vec<Vec<u8>>, usize) {
    let files = files(target);
    let crashes = files
        .iter()
        .filter(|(name, _)| name.starts_with("crash-"))
        .count();
    (files.into_iter().map(|(_, bytes)| bytes).collect(), crashes)
}

/// A captured datagram of `target` with a few bytes flipped and possibly
/// cut short.
pub(crate) fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> + use<> {
    let corpus = real(target);
    (
        any::<prop::sample::Index>(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(pick, flips, cut)| {
            let mut datagram = corpus[pick.index(corpus.len())].clone();
            for (at, byte) in flips {
                let i = at.index(datagram.len());
                datagram[i] ^= byte;
            }
            datagram.truncate(cut.index(datagram.len() + 1));
            datagram
        })
}
