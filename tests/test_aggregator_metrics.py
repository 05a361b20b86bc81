"""The leaves' performance reports: a quota per leaf, pages for the admin, and nothing a leaf sent read as
terminal markup (issue #17, item 8). 100 rows of 1 MB added 92 MB to the database and made the admin's
single metrics call take 15 s and 690 MB; `[/oops]` crashed `fedgrove branch status --metrics`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from aggregator.admin_client import AdminClient
from aggregator.config import AggregatorSettings
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.upload_helpers import auth_headers

QUOTA = 4096


@pytest.fixture
def aggregator_settings(tmp_path: Path, request: pytest.FixtureRequest) -> AggregatorSettings:
    """The default test settings, with what a test passes through `indirect` parametrization on top."""
    return AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None,
                              **getattr(request, "param", {}))


def _report(server: ServerThread, leaf: LeafCredentials, data: str, aggregation_id: str = "a1") -> httpx.Response:
    body = {"mode": "train", "aggregation_id": aggregation_id, "leaf_id": leaf.id, "branch_id": leaf.branch_id,
            "tree_id": leaf.tree_id, "data": data}
    return httpx.post(f"{server.url}/api/v1/performance/analysis", headers=auth_headers(leaf), json=body)


@pytest.mark.parametrize("aggregator_settings", [{"max_metrics_bytes_per_leaf": QUOTA}], indirect=True)
def test_a_leaf_past_its_metrics_quota_is_413_and_the_other_leaves_still_report(aggregator, branch) -> None:
    first, second = branch(leaves=2)
    data = json.dumps({"loss": "x" * 1480})  # 1,494 bytes

    assert [_report(aggregator, first, data).status_code for _ in range(2)] == [201, 201]
    refused = _report(aggregator, first, data)

    assert (refused.status_code, refused.json()) == (413, {"error": (
        f"expected at most {QUOTA} bytes of metrics per leaf, got {3 * len(data)} (fix: report fewer or smaller "
        "metrics, or raise FEDGROVE_MAX_METRICS_BYTES_PER_LEAF on the server)")})
    assert _report(aggregator, second, data).status_code == 201
    with AdminClient(aggregator.url, aggregator.context.admin_token) as admin:
        assert len(admin.metrics(first.branch_id)) == 3


def test_the_admin_reads_metrics_a_page_at_a_time_and_the_client_follows_the_pages(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    for index in range(5):
        assert _report(aggregator, leaf, json.dumps({"round": index})).status_code == 201
    headers = {"Authorization": f"Bearer {aggregator.context.admin_token}"}
    url = f"{aggregator.url}/admin/v1/branches/{leaf.branch_id}/metrics"

    first = httpx.get(url, headers=headers, params={"limit": 2}).json()
    rest = httpx.get(url, headers=headers, params={"limit": 10, "after": first["next_after"]}).json()

    assert [row["data"]["round"] for row in first["metrics"]] == [0, 1]
    assert ([row["data"]["round"] for row in rest["metrics"]], rest["next_after"]) == ([2, 3, 4], None)
    with AdminClient(aggregator.url, aggregator.context.admin_token) as admin:
        assert [row["data"]["round"] for row in admin.metrics(leaf.branch_id, page_size=2)] == [0, 1, 2, 3, 4]


def test_branch_status_shows_what_a_leaf_sent_as_text_never_as_markup(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    data = json.dumps({"note": "[/oops]", "link": "[link=https://evil.example]click[/link]"})
    assert _report(aggregator, leaf, data, aggregation_id="[bold red]round[/]").status_code == 201
    environment = {**os.environ, "COLUMNS": "400", "FEDGROVE_ADMIN_TOKEN": aggregator.context.admin_token,
                   "TERM": "xterm-256color", "FORCE_COLOR": "1"}

    shown = subprocess.run(
        [sys.executable, "-m", "fedgrove_cli", "branch", "status", leaf.branch_id, "--metrics",
         "--host", aggregator.url],
        capture_output=True, text=True, env=environment, timeout=60,
    )

    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "[bold red]round[/]" in shown.stdout
    assert '"note": "[/oops]"' in shown.stdout and "[link=https://evil.example]click[/link]" in shown.stdout
    assert "\x1b]8;" not in shown.stdout  # no hyperlink planted in the admin's terminal
