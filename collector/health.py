"""`GET /healthz`: 200 while data is flowing and the writer is not stuck, else 503 (JSON body).

`GET /livez`: 200 while the process answers at all. A liveness probe belongs there: /healthz fails
while EcoFlow's cloud or InfluxDB is down, which a restart cannot fix (and every restart costs an
MQTT login, of which EcoFlow allows about 10 client ids a day).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    def __init__(self, port: int, check: HealthCheck, host: str = "127.0.0.1") -> None:
        self.host = host
        self._check = check
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                detail: dict[str, Any]
                if path == "/livez":
                    healthy, detail = True, {}
                elif path == "/healthz":
                    healthy, detail = outer._check()
                else:
                    self.send_error(404)
                    return
                body = json.dumps({"healthy": healthy, **detail}).encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: probes come every few s
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="healthz", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
