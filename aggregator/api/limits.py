"""An ASGI middleware that bounds every request body in size and in time, without reading it into memory.

Uploads may be as large as `max_upload_bytes`; every other body (admin requests, a leaf's metrics) is small,
and without a limit of its own one request could make the server buffer gigabytes before a handler (or the
authentication) looks at it. A declared Content-Length over the limit is refused before a byte is read; a body
without one (or one that lies) is counted as it streams and cut off at the limit. A body that stops arriving
(no chunk for `idle_timeout_s`) is cut off too: a stalled upload would otherwise keep its connection and its
scratch file for as long as the client keeps the socket open.

A route may turn the cut-off into an answer of its own (FastAPI answers a body it failed to read with 400,
the upload reader with "malformed multipart body"); the client gets the 413 or 408 whatever the route says.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from `receive` when the streamed body passes its limit; answered with 413."""


class BodyStalled(Exception):
    """Raised from `receive` when no chunk of the body arrived within the idle timeout; answered with 408."""



class BodyLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        max_upload_bytes: int,
        upload_paths: tuple[str, ...],
        idle_timeout_s: float,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths
        self.idle_timeout_s = idle_timeout_s

    def _too_large(self, path: str) -> tuple[int, str]:
        if path in self.upload_paths:
            return 413, f"upload is larger than {self.max_upload_bytes} bytes"
        return 413, f"request body is larger than {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _answer(send, *self._too_large(scope["path"]))
            return
        received = 0
        body_complete = False
        cut_off: tuple[int, str] | None = None  # the answer owed once the body was cut off
        response_started = False
        replacing = False

        async def bounded_receive() -> Message:
            nonlocal received, body_complete, cut_off
            if body_complete:  # from here on only a disconnect can arrive, and waiting for it is no stall
                return await receive()
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                cut_off = 408, f"request body stalled: nothing arrived for {self.idle_timeout_s:g} s; send it again"
                raise BodyStalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > max_bytes:
                    cut_off = self._too_large(scope["path"])
                    raise BodyTooLarge
            else:
                body_complete = True
            return message

        async def answering_send(message: Message) -> None:
            nonlocal response_started, replacing
            if cut_off is not None and not response_started:
                response_started = replacing = True
                await _answer(send, *cut_off)
            if replacing:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, answering_send)
        except (BodyTooLarge, BodyStalled):
            pass
        if cut_off is not None and not response_started:
            await _answer(send, *cut_off)


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 408:  # the client stopped sending: nothing is left to read, the connection is done with
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
