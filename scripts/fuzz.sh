#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 30) from the committed
# corpus (fuzz/corpus/TARGET, read-only here: new inputs go to a temporary
# directory). A crash fails the run, shows libFuzzer's report, and leaves
# the input in fuzz/artifacts/TARGET/ (make it a regression test).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
for target in ring_record json_line ctnetlink nflog dns_response dns_over_tcp client_hello policy; do
    echo "== fuzz $target for ${seconds}s"
    scratch=$(mktemp -d)
    log=$(mktemp)
    # The prebuilt eBPF object (checked against ebpf/ elsewhere) spares a
    # second kernel-side build.
    if ! (cd fuzz && FLOWTRACK_EBPF_PREBUILT=1 cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed" >&2
        exit 1
    fi
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs' "$log" || true
    rm -rf "$scratch" "$log"
done
