"""Malformed and hostile requests against the real server: each gets an exact status and `{"error": ...}`.

Every upload test starts from a branch (3 leaves, target 3) whose open aggregation already holds one
accepted upload, and checks afterwards that the aggregation is unchanged: the same round and leaves,
no blob the database does not account for, nothing left in the scratch folder. Requests go out through
httpx, built as `branchkey.Client.file_upload` builds them except for the part each test breaks. Memory
is measured with `PeakRss`: the server runs in a thread of the test process.

Its length (~890 lines) is the table of cases: 37 tests, most parametrised, that share one branch fixture
and one unchanged-state check; split by topic they would repeat both.
"""

from __future__ import annotations

import bz2
import io
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from aggregator.api import files as files_api
from aggregator.config import AggregatorSettings
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.database_backends import POSTGRESQL, SQLITE, backend_database, on_both_databases
from tests.upload_helpers import (
    MIB,
    ForgedEntry,
    PeakRss,
    StreamedUpload,
    auth_headers,
    branch_state,
    forged_zip,
    many_entries_zip,
    npy_bytes,
    npy_header,
    npz_bytes,
    raw_npy,
    upload,
    upload_headers,
    weights,
    write_zero_bomb,
    zip_bytes,
)

SHAPES = [(4, 7), (7,)]


def _layers(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def _archive(weighting: float = 5.0, layers: list[np.ndarray] | None = None, **extra: np.ndarray) -> bytes:
    return npz_bytes({**weights(weighting, _layers(1) if layers is None else layers), **extra})


def _refused(response: httpx.Response, status: int, message: str) -> None:
    assert (response.status_code, response.json()) == (status, {"error": message})


def _admin(server: ServerThread) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.context.admin_token}"}


@dataclass
class Seeded:
    """A branch whose open aggregation holds leaf 0's accepted upload; `uploader` has not uploaded."""

    server: ServerThread
    leaves: list[LeafCredentials]
    accepted_file_id: str

    @property
    def branch_id(self) -> str:
        return self.leaves[0].branch_id

    @property
    def uploader(self) -> LeafCredentials:
        return self.leaves[1]

    def upload(self, body: bytes, **options: object) -> httpx.Response:
        return upload(self.server.url, self.uploader, body, **options)  # type: ignore[arg-type]

    def assert_unchanged(self) -> None:
        state = branch_state(self.server, self.branch_id)
        assert state.open_round == (1, [self.leaves[0].id])
        assert self.accepted_file_id in state.blobs
        assert state.blobs == state.referenced
        assert state.scratch == frozenset()


def _new_branch(server: ServerThread, leaves: int) -> list[LeafCredentials]:
    _tree, _branch, credentials = server.context.registry.create_branch(
        tree="bad-input", branch=f"branch-{uuid.uuid4().hex}", leaves=leaves
    )
    return credentials


def _seed(server: ServerThread) -> Seeded:
    leaves = _new_branch(server, 3)
    response = upload(server.url, leaves[0], _archive(10.0, _layers(0)))
    assert response.status_code == 201, response.text
    return Seeded(server, leaves, response.json()["data"]["file_id"])


def _server(folder: Path, **settings: object) -> Iterator[ServerThread]:
    with ServerThread(AggregatorSettings(data_dir=folder, port=0, _env_file=None, **settings)) as server:
        yield server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, database_backend: str
) -> Iterator[ServerThread]:
    """One server with the default limits for the module, on SQLite, and one on PostgreSQL for the tests
    marked `on_both_databases` (those of requests the database answers); each test gets branches of its own."""
    with backend_database(request, database_backend) as database_url:
        yield from _server(tmp_path_factory.mktemp("server"), database_url=database_url)

@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with a 1 MiB upload limit and WebSocket tickets that expire at once."""
    yield from _server(tmp_path_factory.mktemp("tight"), max_upload_bytes=MIB, ticket_ttl_s=0)


@pytest.fixture
def seeded(server: ServerThread) -> Seeded:
    return _seed(server)


@pytest.fixture
def tight(tight_server: ServerThread) -> Seeded:
    return _seed(tight_server)


@pytest.fixture
def other_aggregate(server: ServerThread) -> tuple[LeafCredentials, str]:
    """A one-leaf branch whose first aggregation is complete: (its leaf, the aggregate's file id)."""
    (leaf,) = _new_branch(server, 1)
    assert upload(server.url, leaf, _archive()).status_code == 201
    status = httpx.get(f"{server.url}/admin/v1/branches/{leaf.branch_id}", headers=_admin(server))
    return leaf, status.json()["last_aggregation_id"]


@on_both_databases
def test_an_upload_built_like_the_clients_is_accepted(seeded: Seeded) -> None:
    response = seeded.upload(_archive())

    assert response.status_code == 201
    file_id = response.json()["data"]["file_id"]
    state = branch_state(seeded.server, seeded.branch_id)
    assert state.open_round == (1, sorted([seeded.leaves[0].id, seeded.uploader.id]))
    assert {seeded.accepted_file_id, file_id} <= state.blobs
    assert state.blobs == state.referenced
    assert state.scratch == frozenset()


# --- credentials ------------------------------------------------------------------------------------


@on_both_databases
@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("Bearer {id}:wrong-token", "invalid credentials"),
        ("Bearer 00000000-0000-0000-0000-000000000000:{token}", "invalid credentials"),
        ("Bearer {id}", "malformed credentials"),
        ("Bearer {id}:", "malformed credentials"),
        ("Basic {id}:{token}", "malformed credentials"),
        ("{id}:{token}", "malformed credentials"),
    ],
    ids=["missing", "empty", "wrong-token", "unknown-leaf", "no-colon", "no-token", "basic-scheme", "no-scheme"],
)
def test_an_upload_without_valid_credentials_is_401(seeded: Seeded, authorization: str | None, message: str) -> None:
    leaf = seeded.uploader
    header = None if authorization is None else authorization.format(id=leaf.id, token=leaf.session_token)

    response = seeded.upload(_archive(), headers={"Authorization": header})

    _refused(response, 401, message)
    seeded.assert_unchanged()


# --- another branch -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/run/{branch}", "/api/v1/config/branch/{branch}"])
def test_a_leaf_asking_for_another_branch_is_403(seeded: Seeded, other_aggregate, path: str) -> None:
    other_leaf, _aggregate = other_aggregate

    response = httpx.get(seeded.server.url + path.format(branch=other_leaf.branch_id),
                         headers=auth_headers(seeded.uploader))

    _refused(response, 403, f"leaf does not belong to branch {other_leaf.branch_id}")
    seeded.assert_unchanged()


@on_both_databases
def test_a_leaf_downloading_another_branchs_aggregate_is_403(seeded: Seeded, other_aggregate) -> None:
    other_leaf, aggregate = other_aggregate
    url = f"{seeded.server.url}/api/v1/file/download/{aggregate}"
    assert httpx.get(url, headers=auth_headers(other_leaf)).status_code == 200  # its own leaf may

    response = httpx.get(url, headers=auth_headers(seeded.uploader))

    _refused(response, 403, "file belongs to another branch")
    seeded.assert_unchanged()


# --- the run --------------------------------------------------------------------------------------


@on_both_databases
@pytest.mark.parametrize("status", ["pause", "stop"])
def test_an_upload_while_the_run_is_not_started_is_409(seeded: Seeded, status: str) -> None:
    changed = httpx.post(f"{seeded.server.url}/admin/v1/branches/{seeded.branch_id}/run",
                         json={"status": status}, headers=_admin(seeded.server))
    assert changed.json()["run_status"] == status

    response = seeded.upload(_archive())

    _refused(response, 409, f"run is not started (run status: {status})")
    if status == "pause":
        seeded.assert_unchanged()
        return
    # A stop sets the stopped run's upload aside (kept, never averaged) and opens a fresh round; the refused
    # upload added nothing to either.
    state = branch_state(seeded.server, seeded.branch_id)
    assert state.open_round == (2, [])
    assert seeded.accepted_file_id in state.blobs and state.blobs == state.referenced
    assert state.scratch == frozenset()


# --- integrity headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-bk-file-size": None}, "missing x-bk-file-size header"),
        ({"x-bk-file-digest": None}, "missing x-bk-file-digest header"),
        ({"x-bk-file-size": "1"}, "file size does not match x-bk-file-size"),
        ({"x-bk-file-size": "many"}, "file size does not match x-bk-file-size"),
        ({"x-bk-file-digest": "sha256=" + "A" * 43 + "="}, "file digest does not match x-bk-file-digest"),
        ({"x-bk-file-digest": "md5=whatever"}, "file digest does not match x-bk-file-digest"),
    ],
    ids=["no-size", "no-digest", "wrong-size", "size-not-a-number", "wrong-digest", "other-algorithm"],
)
def test_integrity_headers_missing_or_not_matching_the_body_are_400(
    seeded: Seeded, headers: dict[str, str | None], message: str
) -> None:
    response = seeded.upload(_archive(), headers=headers)

    _refused(response, 400, message)
    seeded.assert_unchanged()


def test_a_body_changed_after_the_headers_were_computed_is_400(seeded: Seeded) -> None:
    body = _archive()
    headers = upload_headers(seeded.uploader, body)
    tampered = _archive(weighting=6.0)
    assert len(tampered) == len(body)

    response = seeded.upload(tampered, headers={"x-bk-file-digest": headers["x-bk-file-digest"]})

    _refused(response, 400, "file digest does not match x-bk-file-digest")
    seeded.assert_unchanged()


def test_a_request_without_a_file_part_is_400(seeded: Seeded) -> None:
    response = httpx.post(f"{seeded.server.url}/api/v1/file/upload",
                          headers=upload_headers(seeded.uploader, b""), data={"data": "{}"})

    _refused(response, 400, "missing file part")
    seeded.assert_unchanged()


def _multipart(seeded: Seeded, archive: bytes, parts: list[bytes], boundary: bytes = b"bk-boundary") -> httpx.Response:
    """POST hand-made multipart `parts` (each headers + CRLF CRLF + payload); headers as for `archive`."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    headers = {**upload_headers(seeded.uploader, archive),
               "content-type": "multipart/form-data; boundary=" + boundary.decode()}
    return httpx.post(f"{seeded.server.url}/api/v1/file/upload", headers=headers, content=body)


def _file_part(archive: bytes, name: bytes = b"file") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"; filename="w.npz"\r\n\r\n' + archive


def _field_part(name: bytes, value: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value


def test_a_hand_made_multipart_body_is_accepted(seeded: Seeded) -> None:
    """The control for the cases below: the same construction, by the rules, is taken."""
    archive = _archive(3.0)

    response = _multipart(seeded, archive, [_field_part(b"data", b"{}"), _file_part(archive)])

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "case",
    ["two file parts", "a part without a name", "five fields", "a field over 1 MiB", "no boundary"],
)
def test_a_multipart_body_breaking_the_rules_is_400(seeded: Seeded, case: str) -> None:
    archive = _archive(3.0)
    parts = {
        "two file parts": [_file_part(archive), _file_part(archive, b"other")],
        "a part without a name": [b'Content-Disposition: form-data; filename="w.npz"\r\n\r\n' + archive],
        "five fields": [_field_part(b"f%d" % i, b"x") for i in range(5)] + [_file_part(archive)],
        "a field over 1 MiB": [_field_part(b"data", b"x" * (MIB + 1)), _file_part(archive)],
        "no boundary": [_file_part(archive)],
    }[case]
    if case == "no boundary":
        headers = {**upload_headers(seeded.uploader, archive), "content-type": "multipart/form-data"}
        response = httpx.post(f"{seeded.server.url}/api/v1/file/upload", headers=headers, content=archive)
    else:
        response = _multipart(seeded, archive, parts)

    _refused(response, 400, "malformed multipart body")
    seeded.assert_unchanged()


@pytest.mark.parametrize("case", ["a field named file", "a file part under another name", "no closing boundary",
                                  "not multipart"])
def test_a_body_without_a_whole_file_part_is_400(seeded: Seeded, case: str) -> None:
    archive = _archive(3.0)
    headers = upload_headers(seeded.uploader, archive)
    if case == "a field named file":
        response = _multipart(seeded, archive, [_field_part(b"file", archive)])
    elif case == "a file part under another name":
        response = _multipart(seeded, archive, [_file_part(archive, b"weights")])
    elif case == "no closing boundary":
        body = b"--b\r\n" + _file_part(archive)  # the part's data never ends
        response = httpx.post(f"{seeded.server.url}/api/v1/file/upload", content=body,
                              headers={**headers, "content-type": "multipart/form-data; boundary=b"})
    else:
        response = httpx.post(f"{seeded.server.url}/api/v1/file/upload", content=archive,
                              headers={**headers, "content-type": "application/octet-stream"})

    _refused(response, 400, "missing file part")
    seeded.assert_unchanged()


# --- the zip container ----------------------------------------------------------------------------

_WEIGHTING = npy_bytes(np.array([1.0]))
_LAYER = npy_bytes(np.zeros(3, dtype=np.float32))


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not an npz archive"),
        (b"\x93NUMPY not a zip at all" * 10, "not an npz archive"),
        (npy_bytes(np.zeros(3)), "not an npz archive"),
        (zip_bytes({"weighting.npy": _WEIGHTING, "notes.txt": b"hello"}), "unexpected archive entry 'notes.txt'"),
        (zip_bytes({"weighting.npy": _WEIGHTING, "sub/layer_0.npy": _LAYER}),
         "unexpected archive entry 'sub/layer_0.npy'"),
        (zip_bytes({"weighting.npy": _WEIGHTING, "../layer_0.npy": _LAYER}),
         "unexpected archive entry '../layer_0.npy'"),
        (zip_bytes({"weighting.npy": _WEIGHTING, "/tmp/layer_0.npy": _LAYER}),
         "unexpected archive entry '/tmp/layer_0.npy'"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING), ForgedEntry("layer_0.npy", _LAYER),
                     ForgedEntry("layer_0.npy", _LAYER)]), "unexpected archive entry 'layer_0.npy'"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING, flags=0x1)]),
         "entry 'weighting' is encrypted or patched; expected a plain zip entry"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING, method=99)]),
         "entry 'weighting' uses compression method 99; expected 0 (stored) or 8 (deflate)"),
        (zip_bytes({"weighting.npy": _WEIGHTING, "layer_0.npy": _LAYER}, compression=zipfile.ZIP_LZMA),
         "entry 'weighting' uses compression method 14; expected 0 (stored) or 8 (deflate)"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING, flags=0x800)]).replace(b"weighting", b"weig\xffting"),
         "not an npz archive"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING, crc=0)]), "entry 'weighting' is not a valid npy array"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING), ForgedEntry("layer_0.npy", _LAYER + b"trailing",
                                                                           crc=zlib.crc32(_LAYER))]),
         "entry 'layer_0' is not a valid npy array"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING), ForgedEntry("layer_0.npy", _deflated(_LAYER), method=8,
                                                                           declared_size=len(_LAYER), crc=0)]),
         "entry 'layer_0' is not a valid npy array"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING), ForgedEntry("layer_0.npy", _deflated(_LAYER)[:-4],
                                                                           method=8, declared_size=len(_LAYER),
                                                                           crc=zlib.crc32(_LAYER))]),
         "entry 'layer_0' is not a valid npy array"),
        (forged_zip([ForgedEntry("weighting.npy", _WEIGHTING), ForgedEntry("layer_0.npy", _LAYER)]).replace(
            b"layer_0.npy", b"layer_9.npy", 1), "entry 'layer_0' is not a valid npy array"),
    ],
    ids=["empty", "garbage", "bare-npy", "txt-entry", "nested-path", "parent-path", "absolute-path",
         "duplicate-entry", "encrypted", "unknown-method", "lzma", "bad-utf8-name", "bad-crc",
         "bad-crc-over-bytes-after-the-array", "deflated-bad-crc", "deflated-truncated", "local-name-differs"],
)
def test_an_archive_that_is_not_a_plain_zip_of_npy_files_is_400(
    seeded: Seeded, entry_reading: str, body: bytes, message: str
) -> None:
    response = seeded.upload(body)

    _refused(response, 400, message)
    seeded.assert_unchanged()


def test_a_bzip2_bomb_that_lies_about_its_size_is_400_without_inflating(seeded: Seeded) -> None:
    plain = npy_header((10,)) + bytes(80)
    compressor = bz2.BZ2Compressor(9)
    stream = compressor.compress(plain) + b"".join(compressor.compress(bytes(4 * MIB)) for _ in range(24))
    stream += compressor.flush()  # 96 MiB of zeros in a few hundred bytes, declared as 208
    body = forged_zip([
        ForgedEntry("weighting.npy", _WEIGHTING),
        ForgedEntry("layer_0.npy", stream, method=zipfile.ZIP_BZIP2, declared_size=len(plain), crc=zlib.crc32(plain)),
    ])

    with PeakRss() as memory:
        response = seeded.upload(body)

    _refused(response, 400, "entry 'layer_0' uses compression method 12; expected 0 (stored) or 8 (deflate)")
    assert memory.growth < 32 * MIB
    seeded.assert_unchanged()


# --- the .npy entries -----------------------------------------------------------------------------


def _with_layer_0(entry: bytes) -> bytes:
    return zip_bytes({"weighting.npy": _WEIGHTING, "layer_0.npy": entry, "layer_1.npy": _LAYER})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (npy_bytes(np.array([{}], dtype=object)), "entry 'layer_0' holds Python objects; pickled data is not accepted"),
        (raw_npy("{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }\n", bytes(12)),
         "entry 'layer_0' holds Python objects; pickled data is not accepted"),
        (raw_npy("{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (1,), }\n", bytes(8)),
         "entry 'layer_0' is not a valid npy array"),
        (raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }" + " " * 100_000 + "\n", bytes(8),
                 version=(2, 0)), "entry 'layer_0' is not a valid npy array"),
        (raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }\n", bytes(8)),
         "entry 'layer_0' is not a valid npy array"),
        (raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n", b"", version=(9, 0)),
         "entry 'layer_0' is not a valid npy array"),
        (b"NOTNUMPY" + bytes(64), "entry 'layer_0' is not a valid npy array"),
        (npy_header((2**40,)) + bytes(8), "entry 'layer_0' declares more data than it holds"),
        (npy_header((10**12,), descr="<U0"), "entry 'layer_0' declares more data than it holds"),
        (npy_header((4,)) + bytes(8), "entry 'layer_0' declares more data than it holds"),
        (raw_npy("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (1,), }\n", bytes(8)),
         "entry 'layer_0' has unsupported dtype datetime64[s]"),
    ],
    ids=["pickled-object", "object-in-struct", "code-in-header", "oversized-header", "negative-shape",
         "unknown-version", "bad-magic", "shape-beyond-data", "empty-dtype-huge-shape", "truncated-data",
         "datetime"],
)
def test_a_hostile_or_broken_npy_entry_is_400(seeded: Seeded, entry_reading: str, entry: bytes, message: str) -> None:
    with PeakRss() as memory:
        response = seeded.upload(_with_layer_0(entry))

    _refused(response, 400, message)
    assert memory.growth < 32 * MIB
    seeded.assert_unchanged()


def test_a_pickled_object_array_saved_by_numpy_is_400(seeded: Seeded, entry_reading: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.array([{}], dtype=object))

    response = seeded.upload(buffer.getvalue())

    _refused(response, 400, "entry 'a' holds Python objects; pickled data is not accepted")
    seeded.assert_unchanged()


# --- what the archive holds -----------------------------------------------------------------------


def _entries(**arrays: np.ndarray) -> bytes:
    return npz_bytes(arrays)


_W = np.array([5.0])
_L0, _L1 = _layers(1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_entries(layer_0=_L0, layer_1=_L1), "missing weighting"),
        (_entries(weighting=np.array([1.0, 2.0]), layer_0=_L0, layer_1=_L1), "weighting must be a single number"),
        (_entries(weighting=np.array(["1"]), layer_0=_L0, layer_1=_L1), "weighting must be a single number"),
        (_entries(weighting=np.array([np.nan]), layer_0=_L0, layer_1=_L1),
         "weighting must be a finite number greater than 0, got nan"),
        (_entries(weighting=np.array([np.inf]), layer_0=_L0, layer_1=_L1),
         "weighting must be a finite number greater than 0, got inf"),
        (_entries(weighting=np.array([0.0]), layer_0=_L0, layer_1=_L1),
         "weighting must be a finite number greater than 0, got 0.0"),
        (_entries(weighting=np.array([-3.0]), layer_0=_L0, layer_1=_L1),
         "weighting must be a finite number greater than 0, got -3.0"),
        (_entries(weighting=_W), "no layer_* arrays"),
        (_entries(weighting=_W, layer_0=_L0, layer_2=_L1), "layers must be numbered layer_0 to layer_N without gaps"),
        (_entries(weighting=_W, layer_1=_L0, layer_2=_L1), "layers must be numbered layer_0 to layer_N without gaps"),
        (_entries(weighting=_W, layer_0=_L0, layer_1=_L1, bias=_L1),
         "unexpected entry 'bias' in a federated_learning archive"),
        (_entries(weighting=_W, layer_0=_L0, layer_1=_L1, layer_01=_L1),
         "entry 'layer_01' is not a layer name: layers are layer_0, layer_1, ... without leading zeros"),
        (_entries(weighting=np.array([1e308]), layer_0=np.full((4, 7), 3.0, np.float32),
                  layer_1=np.full(7, -2.0, np.float32)),
         "expected a weighting between 1e-06 and 1e+15, got 1e+308 (fix: send the number of samples the leaf "
         "trained on)"),
        (_entries(weighting=_W, layer_0=np.where(_L0 > 0, np.nan, _L0), layer_1=_L1), "layer_0 contains NaN or Inf"),
        (_entries(weighting=_W, layer_0=_L0, layer_1=np.full(7, -np.inf, np.float32)), "layer_1 contains NaN or Inf"),
        (_entries(weighting=_W, layer_0=_L0.astype(np.complex64), layer_1=_L1),
         "layer_0 has unsupported dtype complex64"),
        (_entries(weighting=_W, layer_0=_L0 > 0, layer_1=_L1), "layer_0 has unsupported dtype bool"),
        (_entries(weighting=_W, layer_0=_L0, layer_1=_L1, __bk_payload_kind__=np.array("federated_magic")),
         "unknown payload kind"),
    ],
    ids=["no-weighting", "two-weightings", "text-weighting", "nan-weighting", "inf-weighting", "zero-weighting",
         "negative-weighting", "no-layers", "gap", "no-layer-0", "extra-entry", "leading-zero-layer",
         "weighting-out-of-range", "nan-layer", "inf-layer",
         "complex-layer", "bool-layer", "unknown-kind"],
)
def test_an_archive_the_aggregation_cannot_use_is_400(seeded: Seeded, body: bytes, message: str) -> None:
    response = seeded.upload(body)

    _refused(response, 400, message)
    seeded.assert_unchanged()


@on_both_databases
def test_values_whose_weighted_sum_would_overflow_are_400_and_the_round_still_averages(server: ServerThread) -> None:
    """Two leaves sending float64 values of 1e300 with weighting 1e8 made the aggregate Inf; the second is now
    refused, and a smaller weighting in its place gives the exact, finite mean."""
    first, second = _new_branch(server, 2)
    ones, twos = [np.full(s, 1e300) for s in SHAPES], [np.full(s, 2e300) for s in SHAPES]
    assert upload(server.url, first, npz_bytes(weights(1e8, ones))).status_code == 201

    response = upload(server.url, second, npz_bytes(weights(1e8, twos)))

    _refused(response, 400, "weighting 1e+08 × the archive's largest value 2e+300 could take the aggregation's "
                            "float64 sum past 1.798e+308; send a smaller weighting (the number of samples the leaf "
                            "trained on)")
    assert branch_state(server, first.branch_id).open_round == (1, [first.id])
    assert upload(server.url, second, npz_bytes(weights(1e7, twos))).status_code == 201
    status = httpx.get(f"{server.url}/admin/v1/branches/{first.branch_id}", headers=_admin(server)).json()
    with server.context.blobs.open_local(status["last_aggregation_id"]) as path, \
            np.load(path, allow_pickle=False) as aggregate:
        for index, shape in enumerate(SHAPES):
            np.testing.assert_allclose(aggregate[f"layer_{index}"], np.full(shape, 1.2 / 1.1 * 1e300), rtol=1e-6)


@on_both_databases
@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([np.zeros((3, 3), np.float32), _L1],
         "layer_0 has shape (3, 3) and dtype float32; the open aggregation expects shape (4, 7) and dtype float32"),
        ([_L0, np.zeros((7, 1), np.float32)],
         "layer_1 has shape (7, 1) and dtype float32; the open aggregation expects shape (7,) and dtype float32"),
        ([_L0, _L1.astype(np.float64)],
         "layer_1 has shape (7,) and dtype float64; the open aggregation expects shape (7,) and dtype float32"),
        ([_L0, _L1, _L1], "archive has 3 layers; the open aggregation expects 2"),
        ([_L0], "archive has 1 layers; the open aggregation expects 2"),
    ],
    ids=["shape-0", "shape-1", "dtype", "more-layers", "fewer-layers"],
)
def test_layers_that_differ_from_the_open_aggregation_are_409(
    seeded: Seeded, layers: list[np.ndarray], message: str
) -> None:
    response = seeded.upload(npz_bytes(weights(5.0, layers)))

    _refused(response, 409, message)
    seeded.assert_unchanged()


@on_both_databases
def test_an_analytics_archive_into_a_learning_aggregation_is_409(seeded: Seeded) -> None:
    body = _entries(weighting=np.array([0.0]), age_n=np.array([3]), __bk_payload_kind__=np.array("federated_analytics"))

    response = seeded.upload(body)

    _refused(response, 409, "archive is federated_analytics; the open aggregation is federated_learning")
    seeded.assert_unchanged()


_ANALYTICS = {"weighting": np.array([0.0]), "__bk_payload_kind__": np.array("federated_analytics")}


@on_both_databases
@pytest.mark.parametrize(
    ("first", "second", "status", "message"),
    [
        (np.array([100], np.int8), np.array([100], np.int8), 400,
         "field 'age_n': the sum across leaves would not fit its dtype int8; send it in a wider dtype "
         "(save_analytics sends float64 sums and int64 counts)"),
        (np.array([2**62], np.int64), np.array([2**62], np.int64), 400,
         "field 'age_n': the sum across leaves would not fit its dtype int64; send it in a wider dtype "
         "(save_analytics sends float64 sums and int64 counts)"),
        (np.array([60000], np.float16), np.array([60000], np.float16), 400,
         "field 'age_n': the sum across leaves would not fit its dtype float16; send it in a wider dtype "
         "(save_analytics sends float64 sums and int64 counts)"),
        (np.array([100], np.int8), np.array([1000], np.int64), 409,
         "field 'age_n' has shape (1,) and dtype int64; the open aggregation expects shape (1,) and dtype int8"),
    ],
    ids=["int8-wraps", "int64-wraps", "float16-to-inf", "other-dtype"],
)
def test_an_analytics_sum_that_would_not_fit_or_changes_dtype_is_refused(
    server: ServerThread, first: np.ndarray, second: np.ndarray, status: int, message: str
) -> None:
    """These were taken (201) and gave -56, a negative count, Inf and 76."""
    leaves = _new_branch(server, 2)
    assert upload(server.url, leaves[0], npz_bytes({**_ANALYTICS, "age_n": first})).status_code == 201

    response = upload(server.url, leaves[1], npz_bytes({**_ANALYTICS, "age_n": second}))

    _refused(response, status, message)
    state = branch_state(server, leaves[0].branch_id)
    assert state.open_round == (1, [leaves[0].id])
    assert state.blobs == state.referenced and state.scratch == frozenset()


def test_a_boolean_field_to_be_summed_is_400(server: ServerThread) -> None:
    """numpy's sum of booleans is a logical or: True + True gave True, not 2."""
    (leaf, _other) = _new_branch(server, 2)

    response = upload(server.url, leaf, npz_bytes({**_ANALYTICS, "age_n": np.array([True])}))

    _refused(response, 400, "field 'age_n' holds booleans, which cannot be summed; send counts as integers, or "
                            "combine it with min, max or must_match")
    assert branch_state(server, leaf.branch_id).open_round == (1, [])


# --- size limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_upload_limit_is_413_and_not_held_in_memory(tight: Seeded, declared: bool) -> None:
    body = StreamedUpload(64 * MIB)
    headers = {**upload_headers(tight.uploader, b""), "content-type": body.content_type}
    if declared:
        headers["content-length"] = str(len(body))

    with PeakRss() as memory:
        response = httpx.post(f"{tight.server.url}/api/v1/file/upload", headers=headers, content=iter(body),
                              timeout=60)

    assert response.request.headers.get("transfer-encoding") == (None if declared else "chunked")
    _refused(response, 413, "upload is larger than 1048576 bytes")
    assert memory.growth < 16 * MIB
    tight.assert_unchanged()


def test_an_upload_just_under_the_limit_is_read(tight: Seeded) -> None:
    body = StreamedUpload(MIB - 1024)
    headers = {**upload_headers(tight.uploader, bytes(body.file_bytes)), "content-type": body.content_type}

    response = httpx.post(f"{tight.server.url}/api/v1/file/upload", headers=headers, content=iter(body))

    _refused(response, 400, "not an npz archive")  # it got as far as the archive check
    tight.assert_unchanged()


@pytest.fixture(scope="module")
def zero_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """2 GiB of zeros as a float64 layer, deflated to a few MiB."""
    path = write_zero_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz", decompressed_bytes=2 * 1024 * MIB)
    return path.read_bytes()


def test_a_zip_bomb_over_the_decompressed_limit_is_413_before_inflating(seeded: Seeded, zero_bomb: bytes) -> None:
    limit = seeded.server.settings.max_archive_bytes
    assert len(zero_bomb) < 16 * MIB and limit == 1024 * MIB

    with PeakRss() as memory:
        response = seeded.upload(zero_bomb)

    _refused(response, 413, f"archive decompresses to more than {limit} bytes")
    assert memory.growth < 64 * MIB
    seeded.assert_unchanged()


def test_an_archive_with_more_entries_than_the_limit_is_413_before_its_directory_is_parsed(seeded: Seeded) -> None:
    limit = seeded.server.settings.max_archive_entries
    assert limit == 4096
    body = many_entries_zip(150_000)  # 14 MB; zipfile alone would build ~70 MB of objects for it

    with PeakRss() as memory:
        response = seeded.upload(body)

    _refused(response, 413, f"archive has more than {limit} entries")
    assert memory.growth < 32 * MIB
    seeded.assert_unchanged()


def test_an_archive_with_one_entry_over_the_limit_is_413(seeded: Seeded) -> None:
    limit = seeded.server.settings.max_archive_entries

    response = seeded.upload(many_entries_zip(limit + 1))

    _refused(response, 413, f"archive has more than {limit} entries")
    seeded.assert_unchanged()


# --- file ids and download links ------------------------------------------------------------------


@on_both_databases
@pytest.mark.parametrize(
    ("file_id", "status", "message"),
    [
        ("..%2F..%2Fetc%2Fpasswd", 400, "invalid file id"),
        ("a/b", 400, "invalid file id"),
        ("%2E%2E", 400, "invalid file id"),
        ("a.b", 400, "invalid file id"),
        ("x" * 65, 400, "invalid file id"),
        ("0123456789abcdef0123456789abcdef", 404, "file not found"),
    ],
    ids=["encoded-traversal", "slash", "dot-dot", "dot", "too-long", "unknown"],
)
def test_a_download_link_for_a_bad_or_unknown_file_id_is_refused(
    seeded: Seeded, file_id: str, status: int, message: str
) -> None:
    response = httpx.get(f"{seeded.server.url}/api/v1/file/download/{file_id}", headers=auth_headers(seeded.uploader))

    _refused(response, status, message)
    seeded.assert_unchanged()


@on_both_databases
@pytest.mark.parametrize("asker", [0, 1], ids=["own-upload", "another-leafs-upload"])
def test_a_raw_upload_cannot_be_downloaded(seeded: Seeded, asker: int) -> None:
    url = f"{seeded.server.url}/api/v1/file/download/{seeded.accepted_file_id}"

    response = httpx.get(url, headers=auth_headers(seeded.leaves[asker]))

    _refused(response, 403, "only aggregates can be downloaded")
    seeded.assert_unchanged()


def _signed(server: ServerThread, file_id: str, *, expires: int, signature: str | None = None) -> httpx.Response:
    signature = server.context.signer.signature(file_id, expires) if signature is None else signature
    return httpx.get(f"{server.url}/blobs/{file_id}", params={"expires": expires, "signature": signature})


@on_both_databases
def test_the_signed_download_url_serves_the_aggregate_until_it_is_tampered_with_or_expires(
    seeded: Seeded, other_aggregate
) -> None:
    leaf, aggregate = other_aggregate
    server = seeded.server
    link = httpx.get(f"{server.url}/api/v1/file/download/{aggregate}", headers=auth_headers(leaf))
    url = httpx.URL(link.json()["data"]["download_url"])
    expires, signature = int(url.params["expires"]), url.params["signature"]

    served = httpx.get(url)
    assert served.status_code == 200
    with np.load(io.BytesIO(served.content), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["layer_0", "layer_1"]

    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    _refused(_signed(server, aggregate, expires=expires, signature=flipped), 403, "invalid download signature")
    _refused(_signed(server, aggregate, expires=expires + 3600, signature=signature), 403,
             "invalid download signature")
    _refused(_signed(server, aggregate, expires=expires, signature=""), 403, "invalid download signature")
    _refused(_signed(server, seeded.accepted_file_id, expires=expires, signature=signature), 403,
             "invalid download signature")
    _refused(_signed(server, aggregate, expires=int(time.time()) - 1), 403, "download link expired")
    _refused(_signed(server, "a.b", expires=expires), 400, "invalid file id")
    seeded.assert_unchanged()


@pytest.mark.parametrize("read_whole_bytes", [1 << 20, 0], ids=["read-whole", "streamed"])
def test_the_signed_download_sends_the_stored_aggregate_byte_for_byte_and_404_once_it_is_gone(
    seeded: Seeded, other_aggregate, monkeypatch: pytest.MonkeyPatch, read_whole_bytes: int
) -> None:
    """A small aggregate is read whole and sent from memory, a larger one streamed: both send the blob as
    stored, as an attachment named after the file id."""
    monkeypatch.setattr(files_api, "READ_WHOLE_BYTES", read_whole_bytes)
    leaf, aggregate = other_aggregate
    server = seeded.server
    blob = server.context.blobs.local_path(aggregate)
    stored = blob.read_bytes()
    link = httpx.get(f"{server.url}/api/v1/file/download/{aggregate}", headers=auth_headers(leaf))
    url = link.json()["data"]["download_url"]

    served = httpx.get(url)

    assert served.status_code == 200
    assert served.content == stored
    assert served.headers["content-length"] == str(len(stored))
    assert served.headers["content-disposition"] == f'attachment; filename="{aggregate}.npz"'
    blob.unlink()
    try:
        _refused(httpx.get(url), 404, "file not found")
    finally:  # the module's server is shared: the other tests find its store as the database accounts for it
        blob.write_bytes(stored)


# --- WebSocket tickets ----------------------------------------------------------------------------


def _ticket(server: ServerThread, leaf: LeafCredentials) -> tuple[str, str]:
    data = httpx.post(f"{server.url}/api/v1/ws/ticket", headers=auth_headers(leaf)).json()["data"]
    return data["ticket_id"], data["request_id"]


def _ws_url(server: ServerThread, ticket: str, request_id: str) -> str:
    return f"{server.url.replace('http://', 'ws://')}/api/v1/ws?ticket={ticket}&request_id={request_id}"


def _assert_ws_refused(url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 403


def test_an_unknown_websocket_ticket_is_refused(seeded: Seeded) -> None:
    _assert_ws_refused(_ws_url(seeded.server, "not-a-ticket", "0"))
    _assert_ws_refused(f"{seeded.server.url.replace('http://', 'ws://')}/api/v1/ws")
    seeded.assert_unchanged()


def test_a_websocket_ticket_is_single_use(seeded: Seeded) -> None:
    url = _ws_url(seeded.server, *_ticket(seeded.server, seeded.uploader))
    with connect(url, open_timeout=10):
        pass

    _assert_ws_refused(url)
    seeded.assert_unchanged()


def test_a_websocket_ticket_redeemed_with_the_wrong_request_id_is_spent(seeded: Seeded) -> None:
    ticket, request_id = _ticket(seeded.server, seeded.uploader)

    _assert_ws_refused(_ws_url(seeded.server, ticket, request_id + "0"))
    _assert_ws_refused(_ws_url(seeded.server, ticket, request_id))
    seeded.assert_unchanged()


def test_an_expired_websocket_ticket_is_refused(tight: Seeded) -> None:
    ticket, request_id = _ticket(tight.server, tight.uploader)
    time.sleep(0.01)  # the tight server's tickets live for 0 s

    _assert_ws_refused(_ws_url(tight.server, ticket, request_id))
    tight.assert_unchanged()


def test_a_websocket_ticket_needs_leaf_credentials(seeded: Seeded) -> None:
    response = httpx.post(f"{seeded.server.url}/api/v1/ws/ticket")

    _refused(response, 401, "missing credentials")
    seeded.assert_unchanged()


# --- text the database cannot store ---------------------------------------------------------------
# PostgreSQL's text columns hold no NUL character and enforce their length (SQLite's do neither): both were
# 500s on PostgreSQL. Refused before anything is stored, on both databases alike.

NUL_REFUSED = "holds a NUL character (\\u0000), which the database cannot store; send text without it"


@on_both_databases
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tree": "a\u0000b", "branch": "nul", "leaves": 1}, f"tree {NUL_REFUSED}"),
        ({"tree": "t", "branch": "nul", "leaves": 1, "leaf_names": ["a\u0000"]}, f"leaf_names {NUL_REFUSED}"),
        ({"tree": "t", "branch": "nul", "leaves": 1, "model_config": {"k": "a\u0000"}},
         f"model_config {NUL_REFUSED}"),
        ({"tree": "t", "branch": "nul", "leaves": 1, "leaf_names": ["x" * 201]},
         "invalid request: body.leaf_names.0: String should have at most 200 characters"),
    ],
    ids=["tree", "leaf-name", "model-config", "leaf-name-too-long"],
)
def test_a_branch_with_text_the_database_cannot_store_is_400(
    server: ServerThread, body: dict, message: str
) -> None:
    response = httpx.post(f"{server.url}/admin/v1/branches", headers=_admin(server), json=body)

    assert (response.status_code, response.json()) == (400, {"error": message})


@on_both_databases
@pytest.mark.parametrize("field", ["data", "aggregation_id"])
def test_metrics_holding_a_nul_character_are_400(seeded: Seeded, field: str) -> None:
    leaf = seeded.uploader
    body = {"mode": "train", "branch_id": leaf.branch_id, "data": "ok", field: "a\u0000b"}

    response = httpx.post(f"{seeded.server.url}/api/v1/performance/analysis", headers=auth_headers(leaf), json=body)

    assert (response.status_code, response.json()) == (400, {"error": f"{field} {NUL_REFUSED}"})


@on_both_databases
def test_a_branch_id_holding_a_nul_character_is_refused_without_a_500(
    server: ServerThread, database_backend: str
) -> None:
    response = httpx.get(f"{server.url}/admin/v1/branches/a%00b", headers=_admin(server))

    expected = {
        SQLITE: (404, "branch a\u0000b not found"),
        POSTGRESQL: (400, "invalid request: a value too long, or holding a NUL character, for the database to store"),
    }[database_backend]
    assert (response.status_code, response.json()["error"]) == expected
