"""A small offline workload for `flowtrack run`: an HTTP server and client on
loopback, a UDP datagram, and an IPv6 TCP connection; nothing leaves the
machine."""

import http.server
import socket
import threading
import urllib.request


def serve(server):
    server.serve_forever()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=serve, args=(server,), daemon=True).start()
port = server.server_address[1]
page = urllib.request.urlopen(f"http://127.0.0.1:{port}/README.md").read()
print(f"fetched {len(page)} bytes over HTTP from 127.0.0.1:{port}")
server.shutdown()

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", 9))
udp.send(b"hello")
udp.close()
print("sent one UDP datagram to 127.0.0.1:9")

listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.bind(("::1", 0))
listener.listen()
client = socket.create_connection(("::1", listener.getsockname()[1]))
accepted, _ = listener.accept()
client.sendall(b"ping")
accepted.recv(4)
client.close()
accepted.close()
listener.close()
print("made one IPv6 TCP connection to [::1]")
