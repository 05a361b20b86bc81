"""A loopback stand-in for the AskAnna API: records every request and answers what `askanna==0.24.0` expects.

The SDK's run tracking calls two endpoints (askanna/gateways/run.py, askanna/config/api_url.py):

    PUT   {AA_REMOTE}/v1/run/<suuid>/metric/<suuid>/    {"metrics": [...]}     expects 200
    PATCH {AA_REMOTE}/v1/run/<suuid>/variable/<suuid>/  {"variables": [...]}   expects 200

each with the collector's whole list (the platform replaces what it had), and `Authorization: Token
<AA_TOKEN>`. On any other status the SDK raises and reads the body as JSON, so every answer here is JSON.
Anything else gets 404. A request with another token gets 401, as the platform answers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RUN_LIST = re.compile(r"^/v1/run/(?P<run>[\w-]+)/(?P<kind>metric|variable)/(?P<again>[\w-]+)/$")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        """Everything that was sent, as one string to search for leaked values."""
        headers = "\n".join(f"{name}: {value}" for name, value in self.headers.items())
        return f"{self.method} {self.path}\n{headers}\n\n{self.body.decode('utf-8', 'replace')}"


class AskAnnaStandIn:
    """`with AskAnnaStandIn(token=...) as api:` serves on `api.url` until the block ends.

    `status` answers every tracking call with that status instead (e.g. 500); `delay_s` waits before
    answering (to test the client's timeout)."""

    def __init__(self, *, token: str, status: int = 200, delay_s: float = 0.0) -> None:
        self.token = token
        self.status = status
        self.delay_s = delay_s
        self._requests: list[RecordedRequest] = []
        self._stored: dict[tuple[str, str], list[dict]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="askanna-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> AskAnnaStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def stored(self, run_suuid: str, kind: str) -> list[dict]:
        """What the platform would now hold for the run: the last accepted `metric` or `variable` list."""
        with self._lock:
            return list(self._stored.get((run_suuid, kind), []))

    def wait_until(self, condition: Callable[[], bool], *, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        match = _RUN_LIST.match(path)
        expected_method = {"metric": "PUT", "variable": "PATCH"}.get(match["kind"]) if match else None
        if match is None or method != expected_method or match["run"] != match["again"]:
            return 404, {"detail": "Not found."}
        if headers.get("authorization") != f"Token {self.token}":
            return 401, {"detail": "Invalid token."}
        if self.status != 200:
            return self.status, {"detail": "stand-in failure"}
        key = "metrics" if match["kind"] == "metric" else "variables"
        try:
            payload = json.loads(body)[key]
        except (ValueError, KeyError, TypeError):
            return 400, {"detail": f"expected a JSON object with a '{key}' list"}
        with self._lock:
            self._stored[(match["run"], match["kind"])] = payload
        return 200, {"suuid": match["run"], key: len(payload)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                if standin.delay_s:
                    time.sleep(standin.delay_s)
                status, answer = standin._answer(self.command, self.path, headers, body)
                with standin._lock:
                    standin._requests.append(RecordedRequest(self.command, self.path, headers, body, status))
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

        return Handler
