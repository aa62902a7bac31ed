#!/usr/bin/env bash
# The committed eBPF object and the hash of the sources it was built from.
#
#   scripts/ebpf-object.sh build   rebuild prebuilt/flowtrack.bpf.o from ebpf/
#                                  and record the source hash beside it
#   scripts/ebpf-object.sh check   fail if the committed object is stale, or
#                                  if ebpf/ does not build from source
#
# Needs nightly with rust-src and bpf-linker (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

prebuilt=crates/backend-ebpf/prebuilt
object=$prebuilt/flowtrack.bpf.o
hash_file=$prebuilt/SOURCE_SHA256

source_hash() {
    # Every file the object is built from, in a stable order.
    {
        find ebpf crates/ebpf-common -type f \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) \
            -not -path '*/target/*' | LC_ALL=C sort | while read -r file; do
            printf '%s\n' "$file"
            cat "$file"
        done
    } | sha256sum | cut -d' ' -f1
}

# Builds ebpf/ as crates/backend-ebpf/build.rs does (aya-build's flags);
# prints the object's path.
build_from_source() {
    local target_dir=$PWD/target/ebpf-object
    (
        cd ebpf
        CARGO_ENCODED_RUSTFLAGS=$(printf -- '--cfg=bpf_target_arch="x86_64"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf') \
            cargo +nightly build --quiet --release --target bpfel-unknown-none -Z build-std=core \
            --target-dir "$target_dir"
    ) >&2
    echo "$target_dir/bpfel-unknown-none/release/flowtrack"
}

case "${1:-}" in
    build)
        cp "$(build_from_source)" "$object"
        source_hash > "$hash_file"
        echo "wrote $object ($(wc -c < "$object") bytes), source hash $(cat "$hash_file")"
        ;;
    check)
        want=$(source_hash)
        have=$(cat "$hash_file" 2>/dev/null || echo none)
        if [ "$want" != "$have" ]; then
            echo "the committed eBPF object is stale: its sources hash to $want, it was built from $have." >&2
            echo "run: scripts/ebpf-object.sh build, and commit $object and $hash_file" >&2
            exit 1
        fi
        echo "the committed eBPF object matches its sources ($want)"
        # Builds that embed the committed object (FLOWTRACK_EBPF_PREBUILT=1,
        # as CI's do) still prove that the sources build.
        built=$(build_from_source)
        echo "ebpf/ builds from source ($(wc -c < "$built") bytes)"
        ;;
    *)
        echo "usage: $0 build|check" >&2
        exit 2
        ;;
esac
