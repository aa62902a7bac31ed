#!/usr/bin/env bash
# Installs every tool the test suite needs, idempotently: quick when all is
# already there. Run as root on a fresh machine (CI does, via scripts/test.sh).
set -euo pipefail

# Rust stable (1.95) with rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# Test runner and dependency policy checker, from crates.io.
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked
fi
