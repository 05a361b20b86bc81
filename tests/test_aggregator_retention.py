"""What the blob store keeps (issue #17, item 9): a branch's last aggregates and those a leaf has still to
download, the uploads of rounds not yet finished or just finished, aggregates compressed where that is
smaller, nothing a crash left behind. Three uploads of ~190 KiB used to grow the store by 572 MiB, for good."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from aggregator.config import AggregatorSettings
from aggregator.db import Aggregation
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.upload_helpers import MIB, auth_headers, npz_bytes, upload, weights

ZEROS = npz_bytes(weights(1.0, [np.zeros(MIB, np.float32)]))  # 4 MiB of zeros, ~4 KiB deflated


def _settings(data_dir: Path) -> AggregatorSettings:
    return AggregatorSettings(data_dir=data_dir, port=0, _env_file=None, keep_aggregates=2)


def _round(server: ServerThread, leaf: LeafCredentials, *, download: bool) -> str:
    """Upload zeros as `leaf` (its branch's target is 1, so this finishes a round); the aggregate's id."""
    response = upload(server.url, leaf, ZEROS)
    assert response.status_code == 201, response.text
    with server.context.sessions() as session:
        aggregate_id = session.scalar(  # the newest aggregation is the round just opened; this, the one before
            select(Aggregation.id).where(Aggregation.branch_id == leaf.branch_id)
            .order_by(Aggregation.round.desc()).offset(1).limit(1)
        )
    if download:
        link = _link(server, leaf, aggregate_id)
        assert link.status_code == 200, link.text
        assert httpx.get(link.json()["data"]["download_url"]).status_code == 200
    return aggregate_id


def _link(server: ServerThread, leaf: LeafCredentials, file_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/file/download/{file_id}", headers=auth_headers(leaf))


def _blobs(settings: AggregatorSettings) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in (settings.data_dir / "blobs").iterdir()}


def test_a_branch_keeps_its_last_aggregates_compressed_and_the_newest_rounds_uploads(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "aggregator")
    with ServerThread(settings) as server:
        (leaf,) = server.context.registry.create_branch(tree="t", branch="b", leaves=1)[2]
        aggregates = [_round(server, leaf, download=True) for _ in range(5)]

        stored = _blobs(settings)
        expired = _link(server, leaf, aggregates[0])

    assert set(aggregates[3:]) <= set(stored) and not set(aggregates[:3]) & set(stored)
    assert len(stored) == 3  # the last two aggregates and the last round's upload, kept for a resend
    assert max(stored.values()) < 64 * 1024  # 4 MiB of zeros, deflated
    assert (expired.status_code, expired.json()) == (410, {"error": (
        f"expected an aggregate the server keeps, got {aggregates[0]}, deleted: a branch keeps its last 2 and "
        "those a leaf has not downloaded (fix: download the newest)")})


def test_an_aggregate_a_leaf_has_not_downloaded_is_kept(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "aggregator")
    with ServerThread(settings) as server:
        away, present = server.context.registry.create_branch(tree="t", branch="b", leaves=2, target=1)[2]
        owed = _round(server, away, download=False)
        later = [_round(server, present, download=True) for _ in range(4)]

        stored = _blobs(settings)
        link = _link(server, away, owed)

    assert owed in stored and set(later[2:]) <= set(stored) and not set(later[:2]) & set(stored)
    assert link.status_code == 200, link.text


@pytest.mark.parametrize("leftover", ["0123456789abcdef0123456789abcdef", ".put~abc.tmp"], ids=["orphan", "temp"])
def test_blobs_a_crash_left_behind_are_deleted_at_start_up_and_files_not_the_servers_are_kept(
    tmp_path: Path, leftover: str
) -> None:
    settings = _settings(tmp_path / "aggregator")
    with ServerThread(settings) as server:
        (leaf,) = server.context.registry.create_branch(tree="t", branch="b", leaves=1)[2]
        _round(server, leaf, download=True)
    (settings.data_dir / "blobs" / "model.pt").write_bytes(b"someone else's, in the same store")
    kept = _blobs(settings)
    (settings.data_dir / "blobs" / leftover).write_bytes(b"stored, never committed")

    with ServerThread(settings):
        assert _blobs(settings) == kept
