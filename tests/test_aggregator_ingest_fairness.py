"""Uploads of one branch do not hold up another's (issue #17, item 6): two leaves of other branches sending
archives that inflate to a GiB took an honest tiny upload elsewhere from 13 ms to 10.8 s."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from tests.upload_helpers import MIB, npy_bytes, npy_header, npz_bytes, upload, weights


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A float64 layer of 384 MiB of zeros ending in NaN: a few hundred KiB deflated, refused only once the
    whole of it has been inflated and read."""
    path = tmp_path_factory.mktemp("large") / "large.npz"
    count = 384 * MIB // 8
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("weighting.npy", npy_bytes(np.array([1.0])))
        with archive.open("layer_0.npy", "w", force_zip64=True) as entry:
            entry.write(npy_header((count,)))
            zeros = bytes(4 * MIB)
            for _ in range((count - 1) * 8 // len(zeros)):
                entry.write(zeros)
            entry.write(bytes((count - 1) * 8 % len(zeros)) + np.array([np.nan]).tobytes())
    return path.read_bytes()


def test_a_tiny_upload_is_answered_while_two_other_branches_inflate_large_archives(
    tmp_path: Path, large: bytes
) -> None:
    settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None)
    with ServerThread(settings) as server:
        registry = server.context.registry
        senders = [registry.create_branch(tree="t", branch=name, leaves=2)[2][0] for name in ("a", "b")]
        (honest, _other) = registry.create_branch(tree="t", branch="honest", leaves=2)[2]
        answered: list[int] = []

        def send_large(leaf) -> None:  # type: ignore[no-untyped-def]
            answered.append(upload(server.url, leaf, large).status_code)

        threads = [threading.Thread(target=send_large, args=(leaf,)) for leaf in senders]
        for thread in threads:
            thread.start()
        blobs = settings.data_dir / "blobs"
        deadline = time.monotonic() + 30
        while len(list(blobs.glob("*"))) < 2:  # both are stored: both are being inflated
            assert time.monotonic() < deadline and not answered, "the large uploads were not taken in"
            time.sleep(0.005)

        tiny = upload(server.url, honest, npz_bytes(weights(1.0, [np.ones(3, np.float32)])))
        large_answered_first = list(answered)
        for thread in threads:
            thread.join(timeout=120)

    assert tiny.status_code == 201, tiny.text
    assert large_answered_first == []
    assert answered == [400, 400]  # "layer_0 contains NaN or Inf", once inflated
