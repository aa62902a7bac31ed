"""Writes the ring_record fuzz corpus: records in the exact layout the kernel
program writes (flow_ebpf_common::RawFlowRecord, native little-endian;
an opened record followed by a socket owner, here none, and a cgroup id),
for the flows of the README's main job as a real run reported them: the
initiator's counters, then the responder's."""

import ipaddress
import pathlib
import struct

LAYOUT = "<II16s16sHHBB2sQQQQQQ"  # 96 bytes
OWNER_AND_CGROUP = bytes(40 + 8)
OPENED, CLOSED = 1, 2


def record(kind, reason, src, sport, dst, dport, proto, packets, bytes_, first, ts):
    """packets and bytes_: (initiator's, responder's)."""
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 4 if src.version == 4 else 6
    pad = lambda a: a.packed.ljust(16, b"\0")
    flow = struct.pack(LAYOUT, kind, reason, pad(src), pad(dst), sport, dport, proto, family,
                       b"\0\0", packets[0], bytes_[0], packets[1], bytes_[1], first, ts)
    return flow + OWNER_AND_CGROUP if kind == OPENED else flow


flows = [
    (6, "127.0.0.1", 38598, "127.0.0.1", 43505, (6, 6), (488, 14122), 1),
    (17, "127.0.0.1", 60729, "127.0.0.1", 9, (1, 0), (33, 0), 3),
    (6, "::1", 53500, "::1", 49781, (4, 4), (354, 242), 1),
    (1, "127.0.0.1", 4242, "127.0.0.1", 2048, (1, 1), (60, 60), 4),
    (58, "::1", 4343, "::1", 32768, (1, 1), (80, 80), 4),
]
out = pathlib.Path(__file__).parent / "corpus" / "ring_record"
out.mkdir(parents=True, exist_ok=True)
for n, (proto, src, sport, dst, dport, packets, bytes_, reason) in enumerate(flows):
    first = 4020_867_016_112 + n
    (out / f"opened-{n}").write_bytes(record(OPENED, 0, src, sport, dst, dport, proto, (1, 0), (60, 0), first, first))
    (out / f"closed-{n}").write_bytes(record(CLOSED, reason, src, sport, dst, dport, proto, packets, bytes_, first, first + 7_000_000))
