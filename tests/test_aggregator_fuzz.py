"""Property-based fuzzing of the real server's leaf endpoints with hypothesis.

One server for the module. Its branch "seeded" (3 leaves, target 3) holds one accepted upload of leaf 0
(layers float32 (4, 7) and (7,)); leaf 1 sends the fuzzed requests. A one-leaf branch with a finished
aggregation gives the download tests a real aggregate to aim near. For every input:

- the answer is never a 5xx, and no exception escapes the app's handlers (a middleware counts both);
- every 4xx is JSON `{"error": "<non-empty string>"}` and nothing else;
- `/health` still answers, and the seeded branch's open aggregation is unchanged: the same
  `(round, leaf ids)` from `service.open_round`, no blob the database does not account for, an empty
  scratch folder.

No generator can build an upload the open aggregation would accept: none writes a float32 (4, 7) layer_0
except inside a valid archive that it then cuts short (no end record: not a zip), and bytes are changed
only in an archive whose layer_0 is (3, 3). So an upload answered 201 is a finding too.

The tests after the fuzzing ones are the smallest inputs that answered 500 before the fixes they came with.
The number of inputs each test tried is logged (shown by `pytest -rA`) and recorded with `record_property`.

Its length (~760 lines) is one hypothesis strategy per endpoint beside its property; the strategies share
the seeded server and the unchanged-state check, so they stay in one module.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import string
import time
import urllib.parse
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from aggregator.config import AggregatorSettings
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.load_helpers import ErrorLogTrap, StatusCounts, counted
from tests.upload_helpers import (
    ForgedEntry,
    auth_headers,
    branch_state,
    forged_zip,
    npy_bytes,
    npz_bytes,
    raw_npy,
    upload,
    weights,
    zip_bytes,
)

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)  # the counts are INFO records; pytest's capture handler keeps every level

SEED_SHAPES = [(4, 7), (7,)]
FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree; a failure prints its reproducer instead
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the server and its invariants ----------------------------------------------------------------


@dataclass
class Target:
    server: ServerThread
    counts: StatusCounts
    errors: ErrorLogTrap
    leaves: list[LeafCredentials]  # the seeded branch; leaf 0 has uploaded, leaf 1 sends the fuzz
    accepted_file_id: str
    other_leaf: LeafCredentials  # the one leaf of a branch with a finished aggregation
    aggregate_id: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    tried: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return self.server.url

    def __repr__(self) -> str:  # hypothesis prints the strategies' arguments; keep the tokens out of it
        return f"Target({self.url})"

    @property
    def branch_id(self) -> str:
        return self.leaves[0].branch_id

    @property
    def fuzzer(self) -> LeafCredentials:
        return self.leaves[1]

    def send(self, method: str, path: str, **options: object) -> httpx.Response:
        response = self.client.request(method, f"{self.url}{path}", **options)  # type: ignore[arg-type]
        assert_answer(response)
        return response

    def reset(self) -> None:
        """Forget what earlier tests of the module found, so each test reports only its own findings."""
        self.counts.http.clear()
        self.counts.escaped.clear()
        self.errors.records.clear()

    def assert_unchanged(self) -> None:
        health = self.client.get(f"{self.url}/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        state = branch_state(self.server, self.branch_id)
        assert state.open_round == (1, [self.leaves[0].id]), "the open aggregation changed"
        assert self.accepted_file_id in state.blobs
        assert state.blobs == state.referenced, "a blob the database does not account for"
        assert state.scratch == frozenset(), "a scratch file was left behind"
        assert self.counts.escaped == [], self.counts.escaped
        assert self.counts.server_errors() == {}, self.counts.server_errors()
        assert self.errors.records == [], self.errors.records


def assert_answer(response: httpx.Response) -> None:
    """Never a 5xx; every 4xx is exactly `{"error": "<non-empty string>"}` as JSON."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type", "").startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict) and list(body) == ["error"], body
        assert isinstance(body["error"], str) and body["error"], body


@pytest.fixture(scope="module", autouse=True)
def hypothesis_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis caches constants in `.hypothesis/` under the working directory even with database=None;
    keep that out of the work tree."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    settings_ = AggregatorSettings(data_dir=tmp_path_factory.mktemp("fuzz"), port=0, _env_file=None)
    server = ServerThread(settings_)
    counts = counted(server, StatusCounts())
    with ErrorLogTrap().installed() as errors, server:
        registry = server.context.registry
        _tree, _branch, leaves = registry.create_branch(tree="fuzz", branch="seeded", leaves=3)
        seeded = upload(server.url, leaves[0], npz_bytes(weights(10.0, _seed_layers())))
        assert seeded.status_code == 201, seeded.text
        _tree, _branch, (other,) = registry.create_branch(tree="fuzz", branch="finished", leaves=1)
        assert upload(server.url, other, npz_bytes(weights(1.0, _seed_layers()))).status_code == 201
        status = httpx.get(f"{server.url}/admin/v1/branches/{other.branch_id}",
                           headers={"Authorization": f"Bearer {server.context.admin_token}"})
        aggregate_id = status.json()["last_aggregation_id"]
        fuzz_target = Target(server, counts, errors, leaves, seeded.json()["data"]["file_id"], other, aggregate_id)
        try:
            yield fuzz_target
        finally:
            fuzz_target.client.close()
            logger.info("fuzz inputs tried: %s (total %d)", dict(fuzz_target.tried), sum(fuzz_target.tried.values()))


@pytest.fixture
def target(server: Target) -> Target:
    # uvicorn logs an exception just after the 500 it sent: let an earlier test's log it before forgetting it
    server.client.get(f"{server.url}/health")
    time.sleep(0.05)
    server.reset()
    return server


def _seed_layers() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(np.float32) for shape in SEED_SHAPES]


def _finish(target: Target, name: str, record_property, examples: int) -> None:  # type: ignore[no-untyped-def]
    record_property(f"fuzz_inputs_{name}", target.tried[name])
    logger.info("%s: %d inputs tried (max_examples=%d)", name, target.tried[name], examples)


# --- strategies: header values, credentials --------------------------------------------------------

_LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def header_values(max_size: int = 80) -> st.SearchStrategy[bytes]:
    """Any value h11 will put on the wire: latin-1, no control characters, no leading or trailing blank."""
    return st.text(alphabet=_LATIN1, max_size=max_size).map(lambda s: s.strip(" \t").encode("latin-1"))


def numberish() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
        st.sampled_from([b"", b"0", b"-1", b"1e3", b"0x10", b"1_000", b"1 2", b"\xd9\xa1", b"9" * 5000, b"NaN"]),
        header_values(20),
    )


def authorizations(leaf: LeafCredentials) -> st.SearchStrategy[bytes | None]:
    valid = f"Bearer {leaf.id}:{leaf.session_token}"
    fuzzed = st.one_of(
        st.none(),
        header_values(),
        st.sampled_from([b"", b"Bearer", b"Bearer ", b"Bearer :", b"bearer a:b", b"Basic " + base64.b64encode(b"a:b"),
                         valid.lower().encode(), valid.replace(":", "", 1).encode(), valid.encode() + b"x",
                         f"Bearer {leaf.id}:{leaf.session_token}:extra".encode(),
                         f"Bearer {leaf.id * 50}:{leaf.session_token}".encode()]),
        header_values(60).map(lambda t: f"Bearer {leaf.id}:".encode() + t),
        header_values(60).map(lambda t: b"Bearer " + t + f":{leaf.session_token}".encode()),
    )
    return st.integers(0, 3).flatmap(lambda n: fuzzed if n == 0 else st.just(valid.encode()))


def leaf_headers(draw, leaf: LeafCredentials) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    headers = {"accept": b"application/json", "LEAF": b"true"}
    authorization = draw(authorizations(leaf))
    if authorization is not None:
        headers["Authorization"] = authorization.strip(b" \t")  # what h11 can send
    return headers


# --- strategies: archives --------------------------------------------------------------------------

_WEIGHTING = npy_bytes(np.array([5.0]))


def _incompatible_archive() -> bytes:
    """Valid as an archive, refused by the open aggregation (layer_0 is (3, 3)): safe to corrupt."""
    return npz_bytes(weights(5.0, [np.ones((3, 3), np.float32), np.ones(7, np.float32)]))


def _compatible_archive() -> bytes:
    """What leaf 1 would be accepted with: only ever cut short here, never sent whole."""
    return npz_bytes(weights(5.0, _seed_layers()))


_SHAPES = st.one_of(
    st.tuples(),
    st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
    st.lists(st.sampled_from([-1, 2**31, 2**40, 2**62, 2**63 - 1, 2**64, 10**30]), min_size=1, max_size=3).map(tuple),
)
_DESCRS = st.one_of(
    st.sampled_from(["<f4", "<f8", ">f4", "<f2", "|b1", "|u1", "<i8", ">i2", "<c16", "|O", "<U0", "<U5", "|S0", "|S3",
                     "|V0", "|V8", "<M8[ns]", "<m8[s]", "[('a', '<f4')]", "[('a', '|O')]", "<f4 ", "f4", "float32",
                     "(2,)<f4", "<g", ""]),
    st.text(string.printable, max_size=12),
)


@st.composite
def npy_entries(draw) -> bytes:  # type: ignore[no-untyped-def]
    """A hand-written .npy: any descr, shape and order in the header, and at most 64 bytes of data."""
    descr = draw(_DESCRS)
    shape = draw(st.one_of(_SHAPES.map(repr), st.text(string.printable, max_size=12)))
    order = draw(st.sampled_from(["False", "True", "None", "1", "'no'"]))
    header = "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (
        descr if descr.startswith("[") else repr(descr), order, shape)
    deep = draw(st.sampled_from(["-", "~", "not ", "1+", "(", "["])) * draw(st.integers(1, 4000)) + "1\n"
    header = draw(st.sampled_from([header + "\n", header, header.replace("'", '"') + "\n", "{" + "\n", deep]))
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
    data = draw(st.binary(max_size=64))
    npy = raw_npy(header, data, version=version)
    return npy if draw(st.booleans()) else npy[: draw(st.integers(0, len(npy)))]


_ENTRY_NAMES = st.one_of(
    st.sampled_from(["weighting.npy", "layer_0.npy", "layer_1.npy", "layer_2.npy", "__bk_payload_kind__.npy",
                     "age_n.npy", "LAYER_0.npy", "layer_0.NPY", "layer_00.npy", "layer_-1.npy", "layer_0.npy/",
                     "../layer_0.npy", "/abs.npy", "a\\b.npy", "sub/layer_0.npy", ".npy", "layer_0", "é.npy",
                     "layer_0.npy\x00.txt", " layer_0.npy", "x" * 300 + ".npy", "layer_1.npy.npy"]),
    st.text(min_size=1, max_size=40).filter(lambda name: "\x00" not in name[:1]),
)


@st.composite
def odd_zips(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Zips with odd entry names and contents: never a float32 (4, 7) layer, so never acceptable."""
    contents = st.one_of(
        st.just(_WEIGHTING),
        st.just(npy_bytes(np.ones(7, np.float32))),
        st.just(npy_bytes(np.array("federated_analytics"))),
        npy_entries(),
        st.binary(max_size=64),
    )
    names = draw(st.lists(_ENTRY_NAMES, min_size=1, max_size=5))
    entries = [(name, draw(contents)) for name in names]
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # duplicate entries are on purpose
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


@st.composite
def forged_zips(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Zips whose directory lies: sizes up to 2**32 - 1, odd methods and flags, wrong CRCs."""
    count = draw(st.integers(1, 4))
    entries = [
        ForgedEntry(
            name=draw(_ENTRY_NAMES),
            stored=draw(st.one_of(st.just(_WEIGHTING), npy_entries(), st.binary(max_size=64))),
            method=draw(st.sampled_from([0, 8, 12, 14, 99])),
            declared_size=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
            crc=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
            flags=draw(st.sampled_from([0, 0x1, 0x8, 0x20, 0x40, 0x800])),
        )
        for _ in range(count)
    ]
    return forged_zip(entries)


_ARRAY_DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4))


@st.composite
def numpy_archives(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Real np.savez / savez_compressed archives of random entries (any dtype numpy saves without pickle)."""
    names = draw(st.lists(st.sampled_from(["weighting", "layer_0", "layer_1", "layer_2", "layer_9", "bias",
                                           "__bk_payload_kind__", "age_n", "age_min"]),
                          min_size=1, max_size=5, unique=True))
    arrays = {}
    for name in names:
        if name == "__bk_payload_kind__":
            arrays[name] = np.array(draw(st.sampled_from(["federated_analytics", "federated_learning", "x", ""])))
            continue
        array = draw(hnp.arrays(_ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))
        if array.dtype == np.float32 and array.shape == (4, 7):
            array = array.reshape(7, 4)  # never a layer the open aggregation would take
        arrays[name] = array
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@st.composite
def corrupted(draw) -> bytes:  # type: ignore[no-untyped-def]
    """A real archive cut short (the acceptable one too), or the refused one with bytes changed."""
    if draw(st.booleans()):
        whole = draw(st.sampled_from([_compatible_archive(), _incompatible_archive()]))
        return whole[: draw(st.integers(0, len(whole) - 1))]
    body = bytearray(_incompatible_archive())
    for _ in range(draw(st.integers(1, 8))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        body[at:at] = draw(st.binary(min_size=1, max_size=32))
    return bytes(body)


def archives() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=2048), corrupted(), odd_zips(), forged_zips(), numpy_archives(),
                     st.builds(lambda entry: _zip_with_layer_0(entry), npy_entries()))


def _zip_with_layer_0(entry: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weighting.npy", _WEIGHTING)
        archive.writestr("layer_0.npy", entry)
        archive.writestr("layer_1.npy", npy_bytes(np.ones(7, np.float32)))
    return buffer.getvalue()


# --- strategies: the multipart upload ---------------------------------------------------------------

_BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "


def _digest(body: bytes) -> bytes:
    return b"sha256=" + base64.b64encode(hashlib.sha256(body).digest())


@dataclass(frozen=True)
class UploadRequest:
    headers: dict[str, bytes]
    body: bytes

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        cut = "..." if len(self.body) > 3000 else ""
        return f"UploadRequest(headers={self.headers!r}, body={self.body[:3000]!r}{cut})"


def _part(disposition: bytes, content: bytes, content_type: bytes | None = b"application/octet-stream") -> bytes:
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"\r\n" + content


@st.composite
def upload_requests(draw, leaf: LeafCredentials) -> UploadRequest:  # type: ignore[no-untyped-def]
    archive = draw(archives())
    file_part = _part(b'form-data; name="file"; filename="upload.npz"', archive)
    data_part = _part(b'form-data; name="data"', json.dumps({"leaf_name": leaf.name, "metadata": "{}"}).encode(), None)
    layout = draw(st.sampled_from(["client", "client", "client", "no-data", "no-file", "file-twice", "many-fields",
                                   "odd-disposition", "odd-part-headers"]))
    parts = {
        "client": [data_part, file_part],
        "no-data": [file_part],
        "no-file": [data_part],
        "file-twice": [file_part, file_part],
        "many-fields": [data_part] * draw(st.integers(4, 12)) + [file_part],
    }.get(layout)
    if layout == "odd-disposition":
        disposition = draw(st.one_of(
            st.sampled_from([b'form-data; name="file"', b'form-data; name=file; filename=x.npz', b"form-data",
                             b'attachment; name="file"; filename="a"', b'form-data; name="FILE"; filename="a"',
                             b'form-data; name="file"; filename="../../etc/passwd"',
                             b'form-data; name="file"; filename*=UTF-8\'\'%e2%82%ac.npz',
                             b'form-data; name="file"; filename="' + b"a" * 5000 + b'"']),
            header_values(120),
        ))
        parts = [data_part, _part(disposition, archive)]
    elif layout == "odd-part-headers":
        extra = draw(st.lists(st.tuples(st.text(string.ascii_letters + "-", min_size=1, max_size=20).map(str.encode),
                                        header_values(60)), max_size=4))
        head = b"".join(name + b": " + value + b"\r\n" for name, value in extra)
        parts = [data_part, head + _part(b'form-data; name="file"; filename="upload.npz"', archive,
                                         draw(st.one_of(st.none(), header_values(40))))]
    boundary = draw(st.one_of(st.just("fedgrove-fuzz-boundary"),
                              st.text(_BOUNDARY_CHARS, min_size=1, max_size=70).map(str.strip).filter(bool)))
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + b + b"--\r\n"
    mangle = draw(st.sampled_from(["none", "none", "none", "no-closing", "truncate", "insert", "crlf-to-lf"]))
    if mangle == "no-closing":
        body = body[: -len(b"--" + b + b"--\r\n")]
    elif mangle == "truncate":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif mangle == "insert":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=64)) + body[at:]
    elif mangle == "crlf-to-lf":
        body = body.replace(b"\r\n", b"\n")
    content_type = draw(st.one_of(
        st.just(b"multipart/form-data; boundary=" + b),
        st.just(b'multipart/form-data; boundary="' + b + b'"'),
        st.sampled_from([b"multipart/form-data", b"multipart/form-data; boundary=", b"multipart/mixed; boundary=" + b,
                         b"application/x-www-form-urlencoded", b"application/octet-stream", b"text/plain",
                         b"multipart/form-data; boundary=" + b + b"; charset=utf-\xff"]),
        header_values(80),
    ))
    headers = leaf_headers(draw, leaf)
    headers["content-type"] = content_type
    size, digest = str(len(archive)).encode(), _digest(archive)
    if draw(st.integers(0, 5)) == 0:
        size = draw(st.one_of(numberish(), st.just(size + b"\t0"), st.just(b"+" + size)))
    if draw(st.integers(0, 5)) == 0:
        digest = draw(st.one_of(header_values(), st.just(digest.lower()), st.just(digest[7:]),
                                st.just(b"sha256=" + base64.urlsafe_b64encode(hashlib.sha256(archive).digest())),
                                st.just(b"SHA-256=" + digest[7:])))
    if draw(st.integers(0, 9)) != 0:
        headers["x-bk-file-size"] = size
    if draw(st.integers(0, 9)) != 0:
        headers["x-bk-file-digest"] = digest
    return UploadRequest({name: value.strip(b" \t") for name, value in headers.items()}, body)  # as h11 sends


def test_fuzzed_uploads_never_5xx_and_leave_the_open_aggregation_unchanged(
    target: Target, entry_reading: str, record_property
) -> None:
    examples = 1000 if entry_reading == "whole" else 400  # the streamed path, forced here, serves large entries

    @settings(FUZZ, max_examples=examples)
    @given(request=upload_requests(target.fuzzer))
    def uploads(request: UploadRequest) -> None:
        target.tried[f"upload-{entry_reading}"] += 1
        response = target.send("POST", "/api/v1/file/upload", headers=request.headers, content=request.body)
        assert response.status_code != 201, "an upload no generator can make valid was accepted"
        target.assert_unchanged()

    uploads()
    _finish(target, f"upload-{entry_reading}", record_property, examples)


# --- download links and the signed download ------------------------------------------------------


def _file_ids(target: Target) -> st.SearchStrategy[str]:
    real = [target.aggregate_id, target.accepted_file_id]
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(real).flatmap(lambda fid: st.integers(0, len(fid)).map(lambda n: fid[:n] + "x" + fid[n + 1:])),
        st.sampled_from(["", ".", "..", "../..", "a/b", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "x" * 65, "x" * 64,
                         uuid.uuid4().hex, "-", "\x00", "aggregated_output", "blobs"]),
        st.text(max_size=80),
    )


def _int_or_zero(text: str) -> int:
    try:
        return int(text) if len(text) < 30 else 0
    except ValueError:
        return 0


@st.composite
def download_requests(draw, target: Target) -> tuple[str, str, dict, dict]:  # type: ignore[no-untyped-def]
    file_id = draw(_file_ids(target))
    quoted = urllib.parse.quote(file_id, safe=draw(st.sampled_from(["", "/", "/%"])))
    if draw(st.booleans()):
        leaf = draw(st.sampled_from([target.fuzzer, target.other_leaf]))
        return "GET", f"/api/v1/file/download/{quoted}", leaf_headers(draw, leaf), {}
    expires = draw(st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.just(str(int(time.time()) + 300)),
        st.sampled_from(["", "-0", "1.5", "1e9", "nan", "9" * 5000, " 12", "0x10", "١٢"]),
        st.text(max_size=20),
    ))
    signature = draw(st.one_of(
        st.just(target.server.context.signer.signature(file_id, _int_or_zero(expires))),
        st.text(string.hexdigits, max_size=70),
        st.text(max_size=80),
    ))
    params: dict[str, str] = {}
    if draw(st.integers(0, 5)):
        params["expires"] = expires
    if draw(st.integers(0, 5)):
        params["signature"] = signature
    return "GET", f"/blobs/{quoted}", {}, params


def test_fuzzed_download_links_and_signed_downloads_never_5xx(target: Target, record_property) -> None:
    examples = 600

    @settings(FUZZ, max_examples=examples)
    @given(request=download_requests(target))
    def downloads(request: tuple[str, str, dict, dict]) -> None:
        method, path, headers, params = request
        target.tried["download"] += 1
        target.send(method, path, headers=headers, params=params)
        target.assert_unchanged()

    downloads()
    _finish(target, "download", record_property, examples)


# --- run, branch config, performance, WebSocket tickets -------------------------------------------



def _nested(children: st.SearchStrategy) -> st.SearchStrategy:
    return children | st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)


# JSON three levels deep, spelled out: hypothesis 6.170's st.recursive warns, now and then, that an extend like
# this one "doesn't use its argument", and the suite turns warnings into errors.
_JSON = _nested(_nested(_nested(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))))


@st.composite
def performance_bodies(draw, target: Target) -> bytes:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["client", "client", "json", "bytes", "nested"]))
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "nested":  # a deep array, alone or as the "data" of an otherwise valid body
        depth = draw(st.integers(1, 3000))
        nested = "[" * depth + "]" * depth * draw(st.integers(0, 1))
        if draw(st.booleans()):
            return nested.encode()
        return ('{"mode": "train", "branch_id": "%s", "data": %s}' % (target.branch_id, nested)).encode()
    body = {
        "mode": draw(st.one_of(st.sampled_from(["train", "test", "non-federated"]), _JSON)),
        "aggregation_id": draw(st.one_of(st.just(target.aggregate_id), _JSON)),
        "leaf_id": draw(st.one_of(st.just(target.fuzzer.id), _JSON)),
        "branch_id": draw(st.one_of(st.just(target.branch_id), st.just(target.other_leaf.branch_id), _JSON)),
        "tree_id": draw(st.one_of(st.just(target.fuzzer.tree_id), _JSON)),
        "data": draw(st.one_of(_JSON.map(json.dumps), _JSON, st.just("x" * 1_000_001),
                               st.integers(1, 3000).map(lambda depth: "[" * depth))),  # stored as sent
    }
    for key in draw(st.lists(st.sampled_from(sorted(body)), unique=True, max_size=3)):
        del body[key]
    return json.dumps(body).encode()  # NaN and Infinity included: Python's json reads them


@st.composite
def small_requests(draw, target: Target) -> tuple[str, str, dict, bytes]:  # type: ignore[no-untyped-def]
    endpoint = draw(st.sampled_from(["run", "config", "performance", "performance", "ticket", "admin"]))
    headers = leaf_headers(draw, target.fuzzer)
    if endpoint == "admin":  # the admin token compared with what a header can hold
        token = target.server.context.admin_token
        headers["Authorization"] = draw(st.one_of(
            header_values(), header_values(60).map(lambda t: (b"Bearer " + t).strip()),
            st.just(f"Bearer {token}".encode()), st.just(f"Bearer {token[:-1]}".encode()),
        ))
        return "GET", f"/admin/v1/branches/{target.branch_id}", headers, b""
    if endpoint in ("run", "config"):
        branch = draw(st.one_of(st.just(target.branch_id), st.just(target.other_leaf.branch_id),
                                st.text(max_size=80), st.just("x" * 3000)))
        prefix = "/api/v1/run/" if endpoint == "run" else "/api/v1/config/branch/"
        return "GET", prefix + urllib.parse.quote(branch, safe=draw(st.sampled_from(["", "/"]))), headers, b""
    if endpoint == "performance":
        headers["content-type"] = draw(st.one_of(st.just(b"application/json"), header_values(40)))
        return "POST", "/api/v1/performance/analysis", headers, draw(performance_bodies(target))
    return "POST", "/api/v1/ws/ticket", headers, draw(st.binary(max_size=64))


def test_fuzzed_run_config_performance_ticket_and_admin_requests_never_5xx(target: Target, record_property) -> None:
    examples = 800

    @settings(FUZZ, max_examples=examples)
    @given(request=small_requests(target))
    def requests_(request: tuple[str, str, dict, bytes]) -> None:
        method, path, headers, body = request
        target.tried["run/config/performance/ticket/admin"] += 1
        response = target.send(method, path, headers=headers, content=body)
        if path == "/api/v1/performance/analysis" and response.status_code == 201:
            metrics = target.client.get(f"{target.url}/admin/v1/branches/{target.branch_id}/metrics",
                                        headers={"Authorization": f"Bearer {target.server.context.admin_token}"})
            assert metrics.status_code == 200, f"stored metrics break the admin API: {metrics.text[:200]}"
        target.assert_unchanged()

    requests_()
    _finish(target, "run/config/performance/ticket/admin", record_property, examples)


# --- what the fuzzing found: each input shrunk to its smallest form --------------------------------


def _admin_headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.server.context.admin_token}"}


def test_a_performance_body_nested_1000_deep_is_400_not_500(target: Target) -> None:
    response = target.client.post(f"{target.url}/api/v1/performance/analysis", headers=auth_headers(target.fuzzer),
                                  content=b"[" * 1000)  # json.loads raises RecursionError, not a ValueError

    assert (response.status_code, response.json()) == (400, {"error": "body is not JSON"})
    target.assert_unchanged()


@pytest.mark.parametrize("depth", [300, 1000], ids=["past-pydantic-serialiser", "past-json-parser"])
def test_metrics_nested_too_deep_to_answer_do_not_break_the_admin_metrics(target: Target, depth: int) -> None:
    (leaf,) = target.server.context.registry.create_branch(tree="fuzz", branch=f"metrics-{depth}", leaves=1)[2]
    body = {"mode": "train", "branch_id": leaf.branch_id, "data": "[" * depth + "]" * depth}
    assert target.client.post(f"{target.url}/api/v1/performance/analysis", headers=auth_headers(leaf),
                              json=body).status_code == 201

    response = target.client.get(f"{target.url}/admin/v1/branches/{leaf.branch_id}/metrics",
                                 headers=_admin_headers(target))

    assert response.status_code == 200, response.text[:200]
    assert response.json()["metrics"][0]["data"] == body["data"]  # too deep to answer as JSON: the text as sent
    target.assert_unchanged()


def test_a_signed_download_with_a_non_ascii_signature_is_403_not_500(target: Target) -> None:
    response = target.client.get(f"{target.url}/blobs/{target.aggregate_id}",
                                 params={"expires": int(time.time()) + 60, "signature": "é"})

    assert (response.status_code, response.json()) == (403, {"error": "invalid download signature"})
    target.assert_unchanged()


def test_a_correctly_signed_link_to_a_missing_blob_is_404_not_500(target: Target) -> None:
    file_id, expires = uuid.uuid4().hex, int(time.time()) + 60
    signature = target.server.context.signer.signature(file_id, expires)

    response = target.client.get(f"{target.url}/blobs/{file_id}", params={"expires": expires, "signature": signature})

    assert (response.status_code, response.json()) == (404, {"error": "file not found"})
    target.assert_unchanged()


def test_an_admin_token_with_a_non_ascii_character_is_401_not_500(target: Target) -> None:
    response = target.client.get(f"{target.url}/admin/v1/branches/{target.branch_id}",
                                 headers={"Authorization": "Bearer é".encode("latin-1")})

    assert (response.status_code, response.json()) == (401, {"error": "invalid credentials"})
    target.assert_unchanged()


def test_an_entry_whose_deflate_stream_is_corrupt_is_400_not_500(target: Target, entry_reading: str) -> None:
    body = forged_zip([ForgedEntry("weighting.npy", b"\xff" * 16, method=zipfile.ZIP_DEFLATED, declared_size=128)])

    response = upload(target.url, target.fuzzer, body)  # zlib.error is not an OSError or a ValueError

    assert (response.status_code, response.json()) == (400, {"error": "entry 'weighting' is not a valid npy array"})
    target.assert_unchanged()


def test_an_npy_header_with_an_unclosed_bracket_is_400_not_500(target: Target) -> None:
    body = zip_bytes({"weighting.npy": raw_npy("{\n")})  # numpy's fallback tokenizer raises TokenError

    response = upload(target.url, target.fuzzer, body)

    assert (response.status_code, response.json()) == (400, {"error": "entry 'weighting' is not a valid npy array"})
    target.assert_unchanged()


def test_an_npy_header_nested_past_the_ast_limit_is_400_not_500(target: Target) -> None:
    body = zip_bytes({"weighting.npy": raw_npy("-" * 4000 + "1\n")})  # ast.literal_eval raises RecursionError

    response = upload(target.url, target.fuzzer, body)

    assert (response.status_code, response.json()) == (400, {"error": "entry 'weighting' is not a valid npy array"})
    target.assert_unchanged()


def test_an_entry_needing_zip_version_6_4_is_400_not_500(target: Target) -> None:
    directory_record = b"PK\x01\x02\x14\x00\x14\x00"  # signature, made by 2.0, needs 2.0 to extract
    body = forged_zip([ForgedEntry("weighting.npy", npy_bytes(np.array([1.0])))])
    body = body.replace(directory_record, b"PK\x01\x02\x14\x00\x40\x00")  # zipfile raises NotImplementedError

    response = upload(target.url, target.fuzzer, body)

    assert (response.status_code, response.json()) == (400, {"error": "not an npz archive"})
    target.assert_unchanged()


# --- WebSocket handshakes -------------------------------------------------------------------------


@st.composite
def websocket_queries(draw, target: Target) -> dict[str, str]:  # type: ignore[no-untyped-def]
    ticket = draw(st.sampled_from(["issued", "issued", "random", "none"]))
    query: dict[str, str] = {}
    if ticket == "issued":
        data = target.client.post(f"{target.url}/api/v1/ws/ticket", headers=auth_headers(target.fuzzer)).json()["data"]
        query["ticket"] = data["ticket_id"]
        request_id = data["request_id"]
        query["request_id"] = draw(st.one_of(st.just(request_id), st.just(request_id + "0"),
                                             st.just(request_id.upper()), st.text(max_size=20)))
        if draw(st.booleans()):
            ticket_id = data["ticket_id"]
            query["ticket"] = draw(st.sampled_from([ticket_id[:-1], ticket_id + "=", " " + ticket_id]))
    elif ticket == "random":
        query["ticket"] = draw(st.text(max_size=60))
        query["request_id"] = draw(st.text(max_size=20))
    return query


def test_fuzzed_websocket_tickets_are_refused_or_accepted_never_5xx(target: Target, record_property) -> None:
    examples = 150

    @settings(FUZZ, max_examples=examples)
    @given(query=websocket_queries(target))
    def handshakes(query: dict[str, str]) -> None:
        target.tried["websocket"] += 1
        url = f"{target.url.replace('http://', 'ws://')}/api/v1/ws?{urllib.parse.urlencode(query)}"
        try:
            with connect(url, open_timeout=10):
                pass  # a genuine ticket and its request id: the socket opens
        except InvalidStatus as refused:
            assert refused.response.status_code == 403, refused.response
        except InvalidHandshake as exc:  # anything else wrong with the handshake is a finding
            raise AssertionError(f"handshake failed: {exc!r}") from exc
        target.assert_unchanged()

    handshakes()
    _finish(target, "websocket", record_property, examples)

