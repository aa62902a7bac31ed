"""Captures real kernel messages for the ctnetlink and nflog fuzz corpora
(fuzz/corpus/ctnetlink, fuzz/corpus/nflog): run as root; it makes a
network namespace, turns on conntrack accounting and timestamps there,
subscribes to conntrack events and binds an nflog group, logs new flows, a
denied datagram, DNS answers and ClientHellos there as the backend does,
makes TCP, UDP and ICMP traffic over IPv4 and IPv6 loopback (with a DNS
lookup and a TLS ClientHello), and writes every datagram the kernel sent,
byte for byte. The namespace is removed at the end."""

import os
import pathlib
import socket
import ssl
import struct
import subprocess
import sys
import time

NS = f"flowtrack-seed-{os.getpid()}"
GROUP = 77
HERE = pathlib.Path(__file__).parent / "corpus"


def in_ns(*args):
    subprocess.run(["ip", "netns", "exec", NS, *args], check=True)


def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def echo(family, host):
    """One ICMP echo request over a raw socket (the kernel answers it)."""
    proto, kind = (socket.IPPROTO_ICMP, 8) if family == socket.AF_INET else (socket.IPPROTO_ICMPV6, 128)
    raw = socket.socket(family, socket.SOCK_RAW, proto)
    header = struct.pack("!BBHHH", kind, 0, 0, 4242, 1) + b"p" * 32
    if family == socket.AF_INET:
        header = header[:2] + struct.pack("!H", checksum(header)) + header[4:]
    raw.sendto(header, (host, 0))
    raw.close()


def look_up(family, host):
    """One DNS lookup (a.test A) answered from port 53 with 127.0.0.10."""
    resolver = socket.socket(family, socket.SOCK_DGRAM)
    resolver.bind((host, 53))
    asker = socket.socket(family, socket.SOCK_DGRAM)
    question = b"\x01a\x04test\x00\x00\x01\x00\x01"
    asker.sendto(struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + question, (host, 53))
    query, peer = resolver.recvfrom(512)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 10])
    resolver.sendto(query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + query[12:] + record, peer)
    asker.recv(512)
    asker.close()
    resolver.close()


def client_hello(family, host):
    """A TLS client's ClientHello naming pypi.org, to a server that reads it."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    client.setblocking(False)
    tls = ssl.create_default_context().wrap_socket(client, server_hostname="pypi.org", do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    accepted.recv(4096)
    accepted.close()
    tls.close()
    listener.close()


def child():
    """Runs inside the namespace."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    nl.bind((0, 1 | 2 | 4))  # NEW, UPDATE, DESTROY
    log = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    log.bind((0, 0))
    # NFULNL_MSG_CONFIG: bind GROUP, copy up to 2167 bytes (each rule's
    # snaplen lowers it), flush each packet, number them.
    attrs = b"".join(
        struct.pack("=HH", 4 + len(v), t) + v + b"\0" * (-len(v) % 4)
        for t, v in [
            (1, b"\x01"),  # CMD bind
            (2, struct.pack(">IBB", 2167, 2, 0)),  # MODE packet, 2167 bytes
            (5, struct.pack(">I", 1)),  # QTHRESH 1
            (6, struct.pack(">H", 1)),  # FLAGS seq
        ]
    )
    body = struct.pack("=BBH", 0, 0, socket.htons(GROUP)) + attrs
    log.send(struct.pack("=IHHII", 16 + len(body), (4 << 8) | 1, 1 | 4, 1, 0) + body)
    subprocess.run(["nft", f"add table inet seed; add chain inet seed out {{ type filter hook output priority 0; }}; "
                    f"add chain inet seed in {{ type filter hook input priority 0; }}; "
                    f"add rule inet seed out ct state new log group {GROUP} snaplen 160 prefix \"flowtrack:new\"; "
                    f"add rule inet seed out udp dport 9 log group {GROUP} prefix \"flowtrack:deny\" drop; "
                    f"add rule inet seed in udp sport 53 log group {GROUP} snaplen 2167 prefix \"flowtrack:dns\"; "
                    f"add rule inet seed out meta l4proto tcp ct direction original @ih,0,8 0x16 @ih,40,8 0x01 "
                    f"log group {GROUP} snaplen 2167 prefix \"flowtrack:hello\""], check=True)
    for setting in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        pathlib.Path(f"/proc/sys/net/netfilter/{setting}").write_text("1")
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind((host, 0))
        server.listen()
        client = socket.create_connection(server.getsockname()[:2])
        peer, _ = server.accept()
        client.sendall(b"x" * 3000)
        peer.recv(4096)
        client.close()
        peer.close()
        server.close()
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        udp.sendto(b"hello", udp.getsockname()[:2])
        udp.recv(16)
        try:
            udp.sendto(b"denied", (host, 9))
        except PermissionError:
            pass
        refused = socket.socket(family, socket.SOCK_STREAM)
        try:
            refused.connect((host, 1))
        except ConnectionRefusedError:
            pass
        echo(family, host)
        look_up(family, host)
        client_hello(family, host)
    time.sleep(0.2)
    subprocess.run(["conntrack", "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    time.sleep(0.2)
    for sock, name in ((nl, "ctnetlink"), (log, "nflog")):
        out = HERE / name
        out.mkdir(parents=True, exist_ok=True)
        sock.setblocking(False)
        n = 0
        while True:
            try:
                datagram = sock.recv(65536)
            except BlockingIOError:
                break
            (out / f"real-{n:03}").write_bytes(datagram)
            n += 1
        print(f"{name}: {n} datagrams", file=sys.stderr)


if len(sys.argv) > 1 and sys.argv[1] == "child":
    child()
else:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        in_ns("ip", "link", "set", "lo", "up")
        in_ns(sys.executable, __file__, "child")
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
