"""The demo's orders API: answers GET /orders with JSON on 127.0.0.1:18080."""
import http.server
import json


class Orders(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/orders":
            self.send_error(404)
            return
        body = json.dumps({"orders": [{"id": 1, "total": 42}, {"id": 2, "total": 7}],
                           "client": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", 18080), Orders).serve_forever()
