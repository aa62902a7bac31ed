#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Installs what it needs first (scripts/setup.sh), so it works on a fresh
# machine. Run from anywhere, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# Tests that need root (network namespaces, cgroups, BPF) fail instead of
# skipping when this is set; CI sets it.
if [ "${CI:-}" = "true" ]; then
    export FLOWTRACK_REQUIRE_PRIVILEGED=1
    # A fresh clone gains nothing from incremental builds, and they took
    # a fifth of the run's disk (CI once ran out of it).
    export CARGO_INCREMENTAL=0
fi
echo "== disk: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free where the build goes"

echo "== format"
cargo fmt --all --check
cargo fmt --manifest-path ebpf/Cargo.toml --check
cargo fmt --manifest-path fuzz/Cargo.toml --check

echo "== the committed eBPF object matches ebpf/, which builds from source"
bash scripts/ebpf-object.sh check
# Every build below embeds that object: without this, each feature set and
# profile rebuilt ebpf/ in a target directory of its own (45 s and 320 MB
# apiece).
export FLOWTRACK_EBPF_PREBUILT=1

echo "== lint (all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# A downstream crate picks features; each choice must build on its own.
for features in "" ebpf nflog mock ipfix otlp; do
    echo "== lint flow-supervisor, no default features${features:+, features: $features}"
    cargo clippy -p flow-supervisor --no-default-features ${features:+--features "$features"} --all-targets -- -D warnings
done

echo "== the library brings no command-line, HTTP, metrics or OpenTelemetry crates unless asked (feature otlp)"
if cargo tree -p flow-supervisor -e normal --prefix none | grep -E '^(clap|hyper|prometheus-client|anyhow|tonic|opentelemetry[a-z_-]*) '; then
    echo "flow-supervisor depends on a crate that belongs to the flowtrack command" >&2
    exit 1
fi

echo "== lint the kernel-side program (nightly, bpfel-unknown-none)"
(cd ebpf && cargo +nightly clippy --release --target bpfel-unknown-none -Z build-std=core \
    --target-dir ../target/ebpf-clippy -- -D warnings)

echo "== dependency policy"
cargo deny check licenses bans sources

echo "== the README's main job, as written there"
main_job=$(sed -n '/^# The main job/,/^cargo run/p' README.md | tail -n 1)
echo "$main_job"
main_output=$(eval "$main_job" 2>&1)
printf '%s\n' "$main_output"
if ! grep -q '^flowtrack: 4 flows opened, 4 closed, 1 lookup; nothing lost$' <<<"$main_output"; then
    echo "the main job did not report the workload's four flows and its lookup" >&2
    exit 1
fi
for expected in 'dns .*files\.example\.test A NOERROR 127\.0\.0\.2' \
    'closed .*127\.0\.0\.2:[0-9]+ +files\.example\.test .*python3\[' \
    'closed .*\[::1\]:[0-9]+ +secure\.example\.test .*python3\['; do
    if ! grep -Eq "$expected" <<<"$main_output"; then
        echo "the main job's output has no line matching: $expected" >&2
        exit 1
    fi
done

# Each fuzz target briefly (FUZZ_SECONDS, default 30), from the committed
# corpus; longer runs: FUZZ_SECONDS=600 bash scripts/fuzz.sh.
bash scripts/fuzz.sh
if [ "${CI:-}" = "true" ]; then
    # The fuzz build (sanitizers) is not needed again; the disk is.
    rm -rf fuzz/target
fi

echo "== doc tests"
cargo test --workspace --all-features --doc

# Last, so that its summary line closes the log.
echo "== tests"
cargo nextest run --workspace --all-features --no-fail-fast
