# A real HTTP/1.1 backend for the tests (Python's http.server, keep-alive on).
# argv: PORT LOGFILE [CERT KEY [CLIENT_CA]] (with CERT and KEY it serves HTTPS; with CLIENT_CA it
# also requires a client certificate that CA signed). Each request it gets is appended to LOGFILE
# as one JSON line {method, path, headers, body, peer_port, client_cn}, so tests can assert what
# reached the backend, on which connection, and who presented which certificate.
# Routes: /orders/N (JSON with personal data), /echo (the request back as JSON, and its
# Authorization header in X-Seen-Authorization), /broken (invalid JSON), /big?n=BYTES
# (a JSON string of that many bytes, chunked), /stall?s=SECONDS (answers after that long),
# /cut (promises 1000 bytes, sends 10, closes), anything else 404 JSON.
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
PORT, LOGFILE = int(sys.argv[1]), sys.argv[2]


def client_cn(connection):
    # The CN of the certificate the client presented over TLS, if any.
    getpeercert = getattr(connection, "getpeercert", None)
    cert = getpeercert() if getpeercert else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_one(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size).decode("utf-8", "replace"))
                self.rfile.readline()
            body = "".join(chunks)
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "peer_port": self.client_address[1],
            "client_cn": client_cn(self.connection),
        }
        with LOCK, open(LOGFILE, "a") as log:
            log.write(json.dumps(seen) + "\n")
        path = self.path.split("?")[0]
        if path.startswith("/orders/"):
            self.send_json(200, {
                "id": path.rsplit("/", 1)[1],
                "customer": {"name": "Alice", "email": "alice@example.com"},
                "card": "4111 1111 1111 1111",
                "note": "call +44 20 7946 0958 or mail bob@example.org",
                "total": 42,
            })
        elif path == "/echo":
            auth = self.headers.get("Authorization", "")
            self.send_json(200, seen, {"X-Seen-Authorization": auth})
        elif path == "/broken":
            self.send_raw(200, b'{"email": "alice@example.com", ', "application/json")
        elif path == "/big":
            n = int(self.path.split("n=")[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            payload = b'"' + b"x" * n + b'"'
            for i in range(0, len(payload), 65536):
                part = payload[i:i + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/stall":
            time.sleep(float(self.path.split("s=")[1]))
            self.send_json(200, {"late": True})
        elif path == "/cut":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"partial"')
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        else:
            self.send_json(404, {"error": "no such route"})

    def send_json(self, status, value, headers=None):
        self.send_raw(status, json.dumps(value).encode(), "application/json", headers)

    def send_raw(self, status, body, ctype, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_one


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 4:
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    if len(sys.argv) > 5:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
