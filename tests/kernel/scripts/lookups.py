"""Looks names up at a DNS responder of its own on 127.0.0.1:53 and
connects to each answer at once: `tcp.example.test` over TCP (127.0.0.3),
then COUNT names `n<i>.race.test` over UDP (127.1.<i // 250>.<i % 250 + 1>),
each connection right after its lookup. Prints the port it connected to."""

import socket
import struct
import sys
import threading


def address_of(name):
    if name == "tcp.example.test":
        return "127.0.0.3"
    index = int(name.split(".")[0][1:])
    return f"127.1.{index // 250}.{index % 250 + 1}"


def question_name(query):
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1 : at + 1 + query[at]].decode())
        at += 1 + query[at]
    return ".".join(labels), at + 5


def answer(query):
    """A response to `query` with one A record."""
    name, question_end = question_name(query)
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4)
    return header + query[12:question_end] + record + socket.inet_aton(address_of(name))


def serve_udp(server):
    while True:
        query, client = server.recvfrom(512)
        server.sendto(answer(query), client)


def serve_tcp(server):
    while True:
        connection, _ = server.accept()
        with connection:
            length = struct.unpack(">H", connection.recv(2))[0]
            query = b""
            while len(query) < length:
                query += connection.recv(length - len(query))
            response = answer(query)
            connection.sendall(struct.pack(">H", len(response)) + response)


def query_for(name):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"


def look_up_udp(name):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.settimeout(5)
        resolver.sendto(query_for(name), ("127.0.0.1", 53))
        return socket.inet_ntoa(resolver.recv(512)[-4:])


def look_up_tcp(name):
    with socket.create_connection(("127.0.0.1", 53), timeout=5) as resolver:
        query = query_for(name)
        resolver.sendall(struct.pack(">H", len(query)) + query)
        response = b""
        while True:
            chunk = resolver.recv(4096)
            if not chunk:
                break
            response += chunk
        return socket.inet_ntoa(response[-4:])


def accept_all(server):
    while True:
        connection, _ = server.accept()
        connection.close()


def background(target, server):
    threading.Thread(target=target, args=(server,), daemon=True).start()


udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
background(serve_udp, udp)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 53))
tcp.listen(16)
background(serve_tcp, tcp)
target = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
target.bind(("0.0.0.0", 0))
target.listen(1024)
background(accept_all, target)
port = target.getsockname()[1]

socket.create_connection((look_up_tcp("tcp.example.test"), port)).close()
for i in range(int(sys.argv[1])):
    socket.create_connection((look_up_udp(f"n{i}.race.test"), port)).close()
print(port)
