"""The Prefect UI shows a weekly run and its artifacts: Debian's headless chromium on the test server's UI.

The UI is a JavaScript app, so the page is rendered by a real browser (`--dump-dom` prints the DOM once the
page has settled; `--virtual-time-budget` lets its API calls finish first). The flow-run page is Prefect's
V2 UI at `/v2/runs/flow-run/<id>`, whose `?tab=Artifacts` opens the artifacts tab; `/runs/flow-run/<id>`
(the link Prefect itself prints) is the V1 UI, whose tabs cannot be chosen from the URL.

Chromium resolves no host name but 127.0.0.1 (`--host-resolver-rules`): the V2 UI loads Amplitude's SDK,
which fetches its remote configuration even when the server's analytics are off, and chromium calls Google
services of its own. Set FEDGROVE_UPDATE_SCREENSHOTS=1 to refresh `docs/prefect-flow-run.png` from the run.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.prefect_server import REPO_ROOT, PrefectServer, WeeklyRun

pytestmark = pytest.mark.slow

ARTIFACT_KEYS = (
    "federated-training-rounds",
    "federated-training-summary",
    "federated-training-result-plot",
    "federated-training-progress",
)
WINDOW = (1400, 1000)
SCREENSHOT = REPO_ROOT / "docs" / "prefect-flow-run.png"
CHROMIUM_TIMEOUT_S = 120
RENDER_ATTEMPTS = 3


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("expected a `chromium` binary on PATH (fix: `make chromium`, i.e. apt-get install -y chromium)")


def run_chromium(url: str, *, profile: Path, output: list[str], budget_ms: int) -> subprocess.CompletedProcess[str]:
    command = [
        chromium_binary(),
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
        "--no-pings", "--metrics-recording-only", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
        "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", *output, url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def flow_run_page(server: PrefectServer, flow_run_id: str) -> str:
    return f"{server.url}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"


def test_the_flow_run_page_shows_the_completed_run_and_its_four_artifacts(
    prefect_server: PrefectServer, weekly_run: WeeklyRun, tmp_path: Path
) -> None:
    run = weekly_run.flow_run
    url = flow_run_page(prefect_server, run["id"])
    text = ""
    for attempt in range(RENDER_ATTEMPTS):  # a slow machine may print the DOM before the API calls return
        rendered = run_chromium(url, profile=tmp_path / f"profile-{attempt}", output=["--dump-dom"],
                                budget_ms=15_000 * (attempt + 1))
        assert rendered.returncode == 0, rendered.stderr[-3000:]
        text = visible_text(rendered.stdout)
        if all(key in text for key in ARTIFACT_KEYS):
            break
    missing = [key for key in ARTIFACT_KEYS if key not in text]
    assert not missing, f"artifacts {missing} not on {url}; the page read:\n{text[:3000]}"
    for expected in (run["name"], "Completed", "federated-training", "weekly", "fedgrove-coordinator",
                     "TABLE", "MARKDOWN", "PROGRESS", "Per-round metrics of every site", "Run summary"):
        assert expected in text, f"{expected!r} not on {url}"


def test_a_screenshot_of_the_flow_run_page_is_a_full_window_png(
    prefect_server: PrefectServer, weekly_run: WeeklyRun, tmp_path: Path
) -> None:
    shot = tmp_path / "prefect-flow-run.png"
    taken = run_chromium(flow_run_page(prefect_server, weekly_run.flow_run["id"]), profile=tmp_path / "profile",
                         output=[f"--screenshot={shot}"], budget_ms=20_000)
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert png_size(shot) == WINDOW
    assert shot.stat().st_size > 50_000, "a blank page compresses to a few kB"
    if os.environ.get("FEDGROVE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
