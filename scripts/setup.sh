#!/usr/bin/env bash
# Installs every tool the build and the test suite need, idempotently: quick
# when all is already there. Run as root on a fresh machine (CI does, via
# scripts/test.sh).
set -euo pipefail

# Debian packages: LLVM 22 for bpf-linker; the kernel tests' peers and
# tools (conntrack, nft, ip, bpftool); ulogd2, a peer in the benchmark;
# nfdump (nfcapd) and libfixbuf-tools (ipfixDump), the export tests' collectors.
packages=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev conntrack nftables iproute2 bpftool ulogd2 nfdump libfixbuf-tools)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    # The package may start its daemon; the benchmark runs its own.
    pkill -x ulogd || true
fi

# Rust stable (1.95) with rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# The kernel-side program: nightly with rust-src, and bpf-linker on LLVM 22.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src --toolchain nightly
fi
if ! bpf-linker --version >/dev/null 2>&1; then
    LLVM_PREFIX=/usr/lib/llvm-22 PATH="/usr/lib/llvm-22/bin:$PATH" \
        cargo install bpf-linker --locked --no-default-features --features llvm-22
fi

# Test runner and dependency policy checker, from crates.io.
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
