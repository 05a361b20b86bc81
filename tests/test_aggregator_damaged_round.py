"""A round whose uploads cannot be read at start-up (a lost blob, a corrupt one, the store down) is marked
damaged; the server starts and serves every other branch (issue #17, item 7). It used to fail to start:
`BlobNotFound ... Application startup failed`, every branch down."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from aggregator.admin_client import AdminClient
from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from tests.upload_helpers import npz_bytes, upload, weights


def _body(value: float) -> bytes:
    return npz_bytes(weights(1.0, [np.full(3, value, np.float32)]))


def _cli_status(server: ServerThread, branch_id: str) -> str:
    environment = {**os.environ, "COLUMNS": "400", "FEDGROVE_ADMIN_TOKEN": server.context.admin_token}
    result = subprocess.run([sys.executable, "-m", "fedgrove_cli", "branch", "status", branch_id, "--host", server.url],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_round_with_a_lost_upload_is_named_damaged_and_the_other_branches_are_served(
    tmp_path: Path, caplog
) -> None:
    settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None)
    with ServerThread(settings) as server:
        _tree, damaged, (lost_leaf, other_leaf) = server.context.registry.create_branch(tree="t", branch="d", leaves=2)
        _tree, healthy, healthy_leaves = server.context.registry.create_branch(tree="t", branch="h", leaves=2)
        lost = upload(server.url, lost_leaf, _body(1.0)).json()["data"]["file_id"]
        assert upload(server.url, healthy_leaves[0], _body(2.0)).status_code == 201
    (settings.data_dir / "blobs" / lost).unlink()
    caplog.set_level(logging.ERROR, logger="aggregator")

    with ServerThread(settings) as server, AdminClient(server.url, server.context.admin_token) as admin:
        assert upload(server.url, healthy_leaves[1], _body(4.0)).status_code == 201
        assert admin.branch_status(healthy)["aggregations_completed"] == 1

        reason = f"BlobNotFound: expected a blob with key '{lost}' in {settings.data_dir / 'blobs'}, got none"
        assert admin.branch_status(damaged)["damaged_round"] == {"round": 1, "reason": reason}
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            f"branch {damaged}: round 1 cannot be rebuilt from its uploads ({reason}); the other branches are "
            f"served, this one answers uploads with 503. Tried again in 5 s; `fedgrove run stop {damaged}` "
            "sets the round's uploads aside"
        ]
        refused = upload(server.url, other_leaf, _body(3.0))
        assert (refused.status_code, refused.json()) == (503, {"error": (
            "the branch's open round cannot be read from the blob store; try again later")})
        shown = _cli_status(server, damaged)
        assert "damaged_round" in shown and f"round 1: {reason}" in " ".join(shown.split())

        admin.set_run_status(damaged, "stop")
        admin.set_run_status(damaged, "start")
        assert admin.branch_status(damaged)["damaged_round"] is None
        for leaf, value in ((lost_leaf, 1.0), (other_leaf, 3.0)):
            assert upload(server.url, leaf, _body(value)).status_code == 201
        assert admin.branch_status(damaged)["aggregations_completed"] == 1
