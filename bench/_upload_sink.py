"""A server that does nothing with an upload: the ceiling any aggregator could reach under the official client.

    python bench/_upload_sink.py PORT

Answers every request with 201 and `{"data": {"file_id": ...}}` after reading its body, over kept-alive
HTTP/1.1 connections, in its own process (as the real server runs). Timing the official client's
`file_upload` against it measures what the client itself costs on this machine (it reads the file twice,
hashes it, validates every layer with `np.load`, builds the multipart body in memory) plus loopback transfer,
with zero server work: ingest MB/s against a real server cannot exceed it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

RESPONSE_BODY = json.dumps({"data": {"file_id": "0" * 32}}).encode()
READ_SIZE = 1 << 20


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            remaining = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    remaining = int(value)
            while remaining:
                chunk = await reader.read(min(remaining, READ_SIZE))
                if not chunk:
                    return
                remaining -= len(chunk)
            writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(RESPONSE_BODY), RESPONSE_BODY))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class SinkProcess:
    """The sink on a free loopback port, in its own process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SinkProcess:
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(self.port)],
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=2) as http:
            while True:
                try:
                    http.post(self.url, content=b"ping")
                    return self
                except httpx.TransportError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the upload sink did not answer on {self.url}") from None
                    time.sleep(0.05)

    def __exit__(self, *_exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
