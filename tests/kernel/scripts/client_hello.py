"""A TLS client on [::1] whose ClientHello names secure.example.test; the
server only reads the hello and hangs up. Prints the client's and the
server's ports."""

import socket
import ssl

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
print(tls.getsockname()[1], listener.getsockname()[1])
tls.close()
listener.close()
