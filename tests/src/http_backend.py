# A real HTTP/1.1 backend for the tests (Python's http.server, keep-alive on).
# argv: PORT LOGFILE [CERT KEY [CLIENT_CA]] (with CERT and KEY it serves HTTPS; with CLIENT_CA it
# also requires a client certificate that CA signed). Each request it gets is appended to LOGFILE
# as one JSON line {method, path, headers, body, peer_port, client_cn}, so tests can assert what
# reached the backend, on which connection, and who presented which certificate.
# Routes: /orders/N (JSON with personal data), /echo (the request back as JSON, and its
# Authorization header in X-Seen-Authorization), /broken (invalid JSON), /big?n=BYTES
# (a JSON string of that many bytes, chunked), /stall?s=SECONDS (answers after that long),
# /cut (promises 1000 bytes, sends 10, closes), /reflect?form=F[&where=headers][&chunk=N][&gzip=1]
# (the request's Authorization header sent back encoded as F: raw, json, base64, url, urlplus;
# in the body, in Location, Set-Cookie and X-Reflected, or in the status line's reason phrase; the body chunked N bytes a chunk;
# gzip-compressed whatever the request accepts), /profile (JSON plus headers carrying
# personal data), anything else 404 JSON. /reflect and /profile answer a Range request with 206.
import base64
import gzip
import json
import urllib.parse
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
                "by_email": {"carol@example.net": "vip"},
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
        elif path == "/reflect":
            self.reflect()
        elif path == "/profile":
            body = json.dumps({"name": "Alice", "email": "alice@example.com"}).encode()
            self.send_ranged(body, "application/json", {
                "X-Customer-Email": "alice@example.com",
                "Location": "/customers?email=alice%40example.com",
                "Set-Cookie": "last_customer=alice@example.com; Path=/",
                "X-Request-Id": "r-1",
            })
        else:
            self.send_json(404, {"error": "no such route"})

    def reflect(self):
        query = dict(urllib.parse.parse_qsl(self.path.split("?", 1)[1]))
        auth = self.headers.get("Authorization", "")
        form = query["form"]
        if form == "raw":
            values = [auth]
        elif form == "json":
            values = [json.dumps({"value": auth})]
        elif form == "base64":
            # Inside a larger base64 text the secret sits at any offset modulo 3.
            values = []
            for k in range(3):
                whole = ("x" * k + auth).encode()
                values.append(base64.b64encode(whole).decode())
                values.append(base64.urlsafe_b64encode(whole).decode())
        elif form == "url":
            values = [urllib.parse.quote(auth), urllib.parse.quote(auth, safe="")]
        elif form == "urlplus":
            values = [urllib.parse.quote_plus(auth), urllib.parse.quote_plus(auth).lower()]
        else:
            raise ValueError(form)
        if query.get("where") == "reason":
            body = b"{}"
            self.send_response(200, values[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if query.get("where") == "headers":
            headers = {
                "Location": "/next?token=" + values[0],
                "Set-Cookie": "session=" + values[-1] + "; Path=/",
                "X-Reflected": " ".join(values),
            }
            self.send_raw(200, b"{}", "application/json", headers)
            return
        body = ("\n".join(values) + "\n").encode()
        if query.get("gzip"):
            self.send_raw(200, gzip.compress(body), "text/plain", {"Content-Encoding": "gzip"})
            return
        chunk = int(query.get("chunk", "0"))
        if not chunk:
            self.send_ranged(body, "text/plain", {})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), chunk):
            part = body[i:i + chunk]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def send_ranged(self, body, ctype, headers):
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes="):
            start, _, end = spec[6:].partition("-")
            start, end = int(start), int(end or len(body) - 1)
            part = body[start:end + 1]
            headers = dict(headers)
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, start + len(part) - 1, len(body))
            self.send_raw(206, part, ctype, headers)
            return
        self.send_raw(200, body, ctype, headers)

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
