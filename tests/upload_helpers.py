"""Uploads built as the official client builds them, malformed ones built on purpose, and a memory gauge.

The valid parts of a request copy `branchkey.Client.file_upload`: multipart part `file`, form field
`data` = JSON {"leaf_name", "metadata"}, headers `Authorization: Bearer <leaf_id>:<token>`, `LEAF: true`,
`x-bk-file-size` and `x-bk-file-digest: sha256=<base64 of the raw SHA-256>`. The client refuses to send
most of what the bad-input tests send, so they go out through httpx directly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from sqlalchemy import select

from aggregator.db import Aggregation, Contribution
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread

MIB = 1024 * 1024


# --- archives -------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A version 1.0 `.npy` header (magic, length, dict) for an array that is not there."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def raw_npy(header_text: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A `.npy` file with a header written by hand (numpy would refuse to write a malicious one)."""
    text = header_text.encode("latin1")
    if version == (1, 0):
        return np.lib.format.magic(1, 0) + struct.pack("<H", len(text)) + text + data
    return np.lib.format.magic(*version) + struct.pack("<I", len(text)) + text + data


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What `np.savez_compressed` writes (and so `Client.save_weights` / `save_fields`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def weights(weighting: float | np.ndarray, layers: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The entries of `Client.save_weights(path, weighting, layers)`."""
    entries = {"weighting": np.asarray(weighting, dtype=np.float64).reshape(-1)}
    entries.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    return entries


def zip_bytes(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of the given names and contents, exactly as given (no `.npy` suffix is added)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@dataclass(frozen=True)
class ForgedEntry:
    """One zip entry written byte by byte, so its directory record may lie about what it holds."""

    name: str
    stored: bytes  # the bytes after the local header, as the compressor left them
    method: int = zipfile.ZIP_STORED
    declared_size: int | None = None  # the uncompressed size the directory claims; default len(stored)
    crc: int | None = None  # default: the CRC-32 of `stored`
    flags: int = 0


def forged_zip(entries: list[ForgedEntry]) -> bytes:
    """A zip (local headers, central directory, end record) whose fields are exactly the ones given."""
    body = io.BytesIO()
    directory = io.BytesIO()
    for entry in entries:
        name = entry.name.encode("utf-8")
        size = len(entry.stored) if entry.declared_size is None else entry.declared_size
        crc = zlib.crc32(entry.stored) if entry.crc is None else entry.crc
        offset = body.tell()
        fields = (entry.flags, entry.method, 0, 0x21, crc, len(entry.stored), size, len(name))
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, *fields, 0) + name + entry.stored)
        directory.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, *fields, 0, 0, 0, 0, 0, offset) + name)
    count = len(entries)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count & 0xFFFF, count & 0xFFFF,
                      directory.tell(), body.tell(), 0)
    return body.getvalue() + directory.getvalue() + end


def write_zero_bomb(path: Path, *, decompressed_bytes: int) -> Path:
    """An archive with `weighting` and one float64 `layer_0` of zeros declaring `decompressed_bytes`.

    Written through zipfile in 4 MiB chunks (level 1 deflate), so building it never holds the array.
    """
    zeros = bytes(4 * MIB)
    count = decompressed_bytes // 8
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("weighting.npy", npy_bytes(np.array([1.0])))
        with archive.open("layer_0.npy", "w", force_zip64=True) as entry:
            entry.write(npy_header((count,)))
            remaining = count * 8
            while remaining > 0:
                entry.write(zeros[: min(remaining, len(zeros))])
                remaining -= len(zeros)
    return path


def many_entries_zip(count: int) -> bytes:
    """A well-formed zip of `count` empty `.npy` entries: a tiny upload with a huge directory."""
    return forged_zip([ForgedEntry(f"e{i:x}.npy", b"") for i in range(count)])


# --- requests -------------------------------------------------------------------------------------


def digest_of(body: bytes) -> str:
    return "sha256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def auth_headers(credentials: LeafCredentials) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {credentials.id}:{credentials.session_token}",
        "accept": "application/json",
        "LEAF": "true",
    }


def upload_headers(credentials: LeafCredentials, body: bytes) -> dict[str, str]:
    headers = auth_headers(credentials)
    headers["x-bk-file-size"] = str(len(body))
    headers["x-bk-file-digest"] = digest_of(body)
    return headers


def form_data(credentials: LeafCredentials, body: bytes) -> dict[str, str]:
    metadata = {"client_version": "3.0.1", "file_size": len(body), "file_digest": digest_of(body)}
    return {"data": json.dumps({"leaf_name": credentials.name, "metadata": json.dumps(metadata)})}


def upload(
    url: str,
    credentials: LeafCredentials,
    body: bytes,
    *,
    headers: dict[str, str | None] | None = None,
) -> httpx.Response:
    """POST `body` as the client would; `headers` overrides (a value of None removes the header)."""
    merged: dict[str, str | None] = {**upload_headers(credentials, body), **(headers or {})}
    sent = {key: value for key, value in merged.items() if value is not None}
    files = {"file": ("upload.npz", body, "application/octet-stream")}
    return httpx.post(f"{url}/api/v1/file/upload", headers=sent, data=form_data(credentials, body),
                      files=files, timeout=60)


@dataclass(frozen=True)
class StreamedUpload:
    """A well-formed multipart body whose `file` part is `file_bytes` zeros, produced as it is sent."""

    file_bytes: int
    boundary: str = "fedgrove-test-boundary"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="upload.npz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

    def _tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        return len(self._head()) + self.file_bytes + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        yield self._head()
        yield from chunks(self.file_bytes)
        yield self._tail()


# --- the branch's state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchState:
    open_round: tuple[int, list[str]]
    blobs: frozenset[str]  # every file in the blob folder
    # the blobs the database accounts for, as the retention policy keeps them: finished (not expired)
    # aggregates, and the uploads of open and set-aside rounds and of each branch's newest finished round
    referenced: frozenset[str]
    scratch: frozenset[str]


def branch_state(server: ServerThread, branch_id: str) -> BranchState:
    data_dir = server.settings.data_dir
    with server.context.sessions() as session:
        rounds = session.scalars(select(Aggregation)).all()
        newest = {}
        for row in rounds:
            if row.status == "complete" and row.round > newest.get(row.branch_id, (0, ""))[0]:
                newest[row.branch_id] = (row.round, row.id)
        kept = {row.id for row in rounds if row.status in ("open", "set_aside")} | {id_ for _, id_ in newest.values()}
        uploads = session.scalars(select(Contribution.id).where(Contribution.aggregation_id.in_(kept)))
        aggregates = [row.id for row in rounds if row.status == "complete"]
        referenced = frozenset([*uploads, *aggregates])
    return BranchState(
        open_round=server.context.service.open_round(branch_id),
        blobs=_names(data_dir / "blobs"),
        referenced=referenced,
        scratch=_names(data_dir / "tmp"),
    )


def _names(folder: Path) -> frozenset[str]:
    return frozenset(p.name for p in folder.iterdir()) if folder.exists() else frozenset()


# --- memory ---------------------------------------------------------------------------------------


class PeakRss:
    """Samples this process's RSS every few milliseconds; `growth` is the peak above the RSS at entry.

    The server runs in a thread of this process, so its allocations show here; `ru_maxrss` would not
    do, since it is the peak of the whole test session, which may have been reached long before.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """`total` bytes of zeros in chunks, for a body streamed without ever being held."""
    block = bytes(size)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece
