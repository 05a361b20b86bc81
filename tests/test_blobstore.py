"""The blob store contract, one suite run against the local folder store and the S3 store.

The S3 store talks to a real S3-compatible server (`rclone serve s3`, see tests/s3_server.py), which
checks signatures, presigned URLs and their expiry, so the credential tests mean something.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aggregator.blobstore import BlobStore, LocalBlobStore, S3BlobStore, blob_store_from_url
from aggregator.blobstore_errors import BlobNotFound, BlobStoreError, BlobStoreUnavailable, InvalidBlobKey

BAD_KEYS = ["../x", "a/b", "", ".", "..", "/etc/passwd", "a\\b", "x" * 129, "a b", "..%2fx", "ключ"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return blob_store_from_url(None, data_dir=tmp_path / "data")
    bucket = request.getfixturevalue("s3_env")
    return blob_store_from_url(f"s3://{bucket}/blobs", data_dir=tmp_path / "data")


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "upload.npz"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_put_then_fetch_returns_identical_bytes(store: BlobStore, archive: Path, tmp_path: Path) -> None:
    store.put_file("abc123", archive)

    fetched = store.fetch("abc123", tmp_path / "fetched.npz")

    assert fetched == tmp_path / "fetched.npz"
    assert fetched.read_bytes() == archive.read_bytes()


def test_move_file_stores_the_bytes_and_consumes_the_source(store: BlobStore, archive: Path, tmp_path: Path) -> None:
    expected = archive.read_bytes()

    store.move_file("abc123", archive)

    assert not archive.exists()
    assert store.fetch("abc123", tmp_path / "fetched.npz").read_bytes() == expected


def test_move_file_across_filesystems_copies_then_consumes(tmp_path: Path) -> None:
    """/dev/shm is a tmpfs: a rename from there into the store's folder fails with EXDEV."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to move from")
    source = shm / f"fedgrove-test-{os.getpid()}-{time.monotonic_ns()}.npz"
    source.write_bytes(b"payload" * 1000)
    store = LocalBlobStore(tmp_path / "blobs")
    try:
        store.move_file("abc123", source)
    finally:
        leftover = source.exists()
        source.unlink(missing_ok=True)
    assert not leftover
    assert (tmp_path / "blobs" / "abc123").read_bytes() == b"payload" * 1000
    assert _tree(tmp_path / "blobs") == {"abc123"}


def test_open_local_yields_a_readable_copy(store: BlobStore, archive: Path) -> None:
    store.put_file("abc123", archive)

    with store.open_local("abc123") as path:
        assert path.read_bytes() == archive.read_bytes()

    assert store.exists("abc123")  # a temporary download is gone, the blob is not
    if isinstance(store, S3BlobStore):
        assert not path.exists()


def test_exists_size_and_delete(store: BlobStore, archive: Path) -> None:
    assert not store.exists("abc123")
    store.put_file("abc123", archive)
    assert store.exists("abc123")
    assert store.size("abc123") == archive.stat().st_size

    store.delete("abc123")

    assert not store.exists("abc123")


def test_keys_lists_every_blob_and_nothing_else(store: BlobStore, archive: Path) -> None:
    assert list(store.keys()) == []
    for key in ("abc123", "def456"):
        store.put_file(key, archive)

    assert sorted(store.keys()) == ["abc123", "def456"]
    assert store.clear_interrupted() == 0


def test_clear_interrupted_deletes_a_local_stores_temporary_files_only(tmp_path: Path, archive: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_file("abc123", archive)
    (tmp_path / "blobs" / ".put~interrupted.tmp").write_bytes(b"half")

    assert store.clear_interrupted() == 1
    assert _tree(tmp_path / "blobs") == {"abc123"}


def test_delete_of_a_missing_key_is_not_an_error(store: BlobStore) -> None:
    store.delete("never-written")


def test_missing_blob_raises_blob_not_found(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound, match="never-written"):
        store.fetch("never-written", tmp_path / "out")
    with pytest.raises(BlobNotFound):
        store.size("never-written")
    with pytest.raises(BlobNotFound), store.open_local("never-written"):
        pass


def test_put_replaces_an_existing_blob(store: BlobStore, archive: Path, tmp_path: Path) -> None:
    store.put_file("abc123", archive)
    newer = tmp_path / "newer.npz"
    newer.write_bytes(b"newer")

    store.put_file("abc123", newer)

    assert store.fetch("abc123", tmp_path / "out").read_bytes() == b"newer"


def test_put_of_a_missing_source_stores_nothing(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        store.put_file("abc123", tmp_path / "does-not-exist.npz")

    assert not store.exists("abc123")
    if isinstance(store, LocalBlobStore):
        assert _tree(store.root) == set()  # no temp file left behind


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_key_raises_and_touches_nothing(
    store: BlobStore, archive: Path, tmp_path: Path, key: str, request: pytest.FixtureRequest
) -> None:
    watched = request.getfixturevalue("s3_server").root if isinstance(store, S3BlobStore) else tmp_path
    before = _tree(watched)
    calls = [
        lambda: store.put_file(key, archive),
        lambda: store.fetch(key, tmp_path / "out"),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.presigned_url(key, expires_in=60),
        lambda: store.local_path(key),
        lambda: store.open_local(key).__enter__(),
    ]
    for call in calls:
        with pytest.raises(InvalidBlobKey, match="expected a blob key"):
            call()

    assert _tree(watched) == before


def test_download_link_serves_the_blob_without_credentials(store: BlobStore, archive: Path) -> None:
    store.put_file("abc123", archive)

    url = store.presigned_url("abc123", expires_in=60)

    if isinstance(store, LocalBlobStore):
        assert url is None  # the server signs and streams its own links
        assert store.local_path("abc123").read_bytes() == archive.read_bytes()
    else:
        assert url is not None and "Signature=" in url
        assert store.local_path("abc123") is None
        assert _http_get(url) == archive.read_bytes()


def test_large_blob_round_trip(store: BlobStore, tmp_path: Path) -> None:
    big = tmp_path / "big.npz"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # above boto3's 8 MB multipart threshold

    store.put_file("big", big)

    assert store.size("big") == big.stat().st_size
    assert store.fetch("big", tmp_path / "big-back.npz").read_bytes() == big.read_bytes()


# --- S3 only: presigned links, credentials, buckets, endpoints ---------------------------------------


@pytest.fixture
def s3_store(s3_env: str) -> S3BlobStore:
    store = blob_store_from_url(f"s3://{s3_env}/blobs", data_dir=Path("unused"))
    assert isinstance(store, S3BlobStore)
    return store


def test_tampered_presigned_url_is_refused(s3_store: S3BlobStore, archive: Path) -> None:
    s3_store.put_file("abc123", archive)
    url = s3_store.presigned_url("abc123", expires_in=60)
    assert url is not None

    for tampered in (url.replace("abc123", "abc124"), url.replace("X-Amz-Expires=60", "X-Amz-Expires=99")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http_get(tampered)
        assert refused.value.code == 403
        refused.value.close()


def test_expired_presigned_url_is_refused(s3_store: S3BlobStore, archive: Path) -> None:
    s3_store.put_file("abc123", archive)
    url = s3_store.presigned_url("abc123", expires_in=1)
    assert url is not None

    time.sleep(2.1)

    with pytest.raises(urllib.error.HTTPError) as refused:
        _http_get(url)
    assert refused.value.code in {400, 403}
    refused.value.close()


def test_presigned_url_lifetime_is_bounded(s3_store: S3BlobStore) -> None:
    with pytest.raises(ValueError, match="expected expires_in between 1 and 604800"):
        s3_store.presigned_url("abc123", expires_in=8 * 24 * 3600)


def test_wrong_secret_names_the_access_key_and_the_fix(
    s3_env: str, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    access_key = os.environ["AWS_ACCESS_KEY_ID"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    store = S3BlobStore(f"s3://{s3_env}/blobs")

    for call in (lambda: store.put_file("abc123", archive), lambda: store.exists("abc123")):
        with pytest.raises(BlobStoreUnavailable) as error:
            call()
        message = str(error.value)
        assert f"access key id {access_key!r}" in message
        assert "fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
        assert "wrong-secret" not in message


def test_unknown_access_key_is_named(s3_env: str, archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "UNKNOWNKEY0000000000")
    store = S3BlobStore(f"s3://{s3_env}/blobs")

    with pytest.raises(BlobStoreUnavailable, match="refused access key id 'UNKNOWNKEY0000000000'.*InvalidAccessKeyId"):
        store.put_file("abc123", archive)


def test_missing_bucket_names_the_bucket_and_the_fix(s3_env: str, archive: Path, tmp_path: Path) -> None:
    store = S3BlobStore("s3://no-such-bucket-fg/blobs")
    expected = (
        r"S3 bucket 'no-such-bucket-fg' does not exist at endpoint http://127\.0\.0\.1:\d+ "
        r"\(fix: create it with `aws s3 mb s3://no-such-bucket-fg`, or fix FEDGROVE_BLOB_URL\)"
    )

    for call in (
        lambda: store.put_file("abc123", archive),
        lambda: store.exists("abc123"),  # a bare HEAD 404 must not read as "no such blob"
        lambda: store.fetch("abc123", tmp_path / "out"),
        lambda: store.delete("abc123"),
    ):
        with pytest.raises(BlobStoreUnavailable, match=expected):
            call()


def test_unreachable_endpoint_is_unavailable(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3BlobStore(f"s3://{s3_env}/blobs", endpoint_url=f"http://127.0.0.1:{port}")

    with pytest.raises(BlobStoreUnavailable, match=f"expected an S3 server at endpoint http://127.0.0.1:{port}"):
        store.exists("abc123")


# --- choosing a store from FEDGROVE_BLOB_URL ----------------------------------------------------------


def test_no_url_means_a_blobs_folder_in_the_data_dir(tmp_path: Path) -> None:
    store = blob_store_from_url(None, data_dir=tmp_path)
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "blobs"
    assert isinstance(blob_store_from_url("", data_dir=tmp_path), LocalBlobStore)


def test_file_url_and_plain_path_mean_that_folder(tmp_path: Path) -> None:
    by_url = blob_store_from_url((tmp_path / "a b").as_uri(), data_dir=Path("unused"))
    by_path = blob_store_from_url(str(tmp_path / "c"), data_dir=Path("unused"))
    assert isinstance(by_url, LocalBlobStore) and by_url.root == tmp_path / "a b"
    assert isinstance(by_path, LocalBlobStore) and by_path.root == tmp_path / "c"


def test_s3_url_means_the_s3_store_with_its_prefix(s3_env: str) -> None:
    store = blob_store_from_url(f"s3://{s3_env}/some/prefix/", data_dir=Path("unused"))
    assert isinstance(store, S3BlobStore)
    assert (store.location.bucket, store.location.prefix) == (s3_env, "some/prefix")


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BlobStoreError, match="expected FEDGROVE_BLOB_URL to be a folder"):
        blob_store_from_url("ftp://host/x", data_dir=tmp_path)
