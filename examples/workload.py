"""A small offline workload for `flowtrack run`, on loopback only: it looks
a name up at a DNS responder of its own, fetches a page over HTTP from the
address the answer gave, sends a UDP datagram, and makes an IPv6 TCP
connection that starts a TLS handshake (its ClientHello names a server);
nothing leaves the machine."""

import socket
import ssl
import struct
import threading

NAME = "files.example.test"
ADDRESS = "127.0.0.2"  # on loopback: all of 127.0.0.0/8 is


def answer(query):
    """A DNS response to `query` with one A record, ADDRESS."""
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    question_end = query.index(b"\0", 12) + 5
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ADDRESS)
    return header + query[12:question_end] + record


def respond(server):
    query, client = server.recvfrom(512)
    server.sendto(answer(query), client)


def look_up(name):
    """The A record of `name`, asked of the responder on 127.0.0.1:53."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.settimeout(5)
        resolver.sendto(query, ("127.0.0.1", 53))
        response = resolver.recv(512)
    return socket.inet_ntoa(response[-4:])


def serve_once(listener, body):
    """Answers one HTTP request on `listener` with `body`."""
    connection, _ = listener.accept()
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 53))
threading.Thread(target=respond, args=(dns,), daemon=True).start()
address = look_up(NAME)
print(f"looked {NAME} up: {address}")

with open(__file__, "rb") as source:
    body = source.read()
web = socket.create_server((address, 0))
port = web.getsockname()[1]
threading.Thread(target=serve_once, args=(web, body), daemon=True).start()
with socket.create_connection((address, port)) as http_client:
    http_client.sendall(f"GET /workload.py HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
    page = b"".join(iter(lambda: http_client.recv(65536), b""))
web.close()
print(f"fetched {len(page)} bytes over HTTP from {NAME} ({address}:{port})")

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", 9))
udp.send(b"hello")
udp.close()
print("sent one UDP datagram to 127.0.0.1:9")

# A TLS client's first bytes name the server it wants (SNI), whatever
# lookup it made; this listener takes the ClientHello and hangs up.
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.bind(("::1", 0))
listener.listen()
client = socket.create_connection(("::1", listener.getsockname()[1]))
accepted, _ = listener.accept()
client.setblocking(False)
tls = ssl.create_default_context().wrap_socket(
    client, server_hostname="secure.example.test", do_handshake_on_connect=False
)
try:
    tls.do_handshake()  # sends the ClientHello, then would wait for the server
except ssl.SSLWantReadError:
    pass
accepted.recv(4096)
accepted.close()
tls.close()
listener.close()
print("made one IPv6 TCP connection to [::1], naming secure.example.test in its ClientHello")
