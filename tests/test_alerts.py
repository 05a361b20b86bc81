"""`fedgrove alerts install` against a real `prefect server`: a failed coordinator run and a model that was not
promoted each reach the user's notification block, here a webhook block pointing at a loopback receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.prefect_server import REPO_ROOT, PrefectServer

pytestmark = pytest.mark.slow


@pytest.fixture
def webhook() -> Iterator[dict]:
    """A loopback HTTP receiver that keeps every JSON body posted to it."""
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/hook", "received": received}
    finally:
        server.shutdown()
        server.server_close()


def _fedgrove(prefect_server: PrefectServer, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgrove_cli", *arguments], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=prefect_server.client_environment(), timeout=300)


def _wait_for(received: list[dict], text: str, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for body in received:
            if text in json.dumps(body):
                return body
        time.sleep(0.5)
    raise AssertionError(f"no notification with {text!r} within {timeout_s} s; received {received}")


def test_the_alerts_reach_the_notification_block_for_a_failed_run_and_a_model_not_promoted(
    prefect_server: PrefectServer, webhook: dict, tmp_path
) -> None:
    name = f"alerts-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(
        [sys.executable, "-c",
         "import sys; from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
         "B(name='fedgrove', url=sys.argv[1], method='POST', "
         "json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save(sys.argv[2])",
         webhook["url"], name],
        env=prefect_server.client_environment(), capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr

    missing = _fedgrove(prefect_server, "alerts", "install", "--block", "custom-webhook/no-such-block")
    assert missing.returncode == 1
    assert ("there is no custom-webhook block named 'no-such-block' on the Prefect API (fix: create it first, e.g. "
            "`prefect block create custom-webhook`, then run this again)") in " ".join(missing.stderr.split())

    installed = _fedgrove(prefect_server, "alerts", "install", "--block", f"custom-webhook/{name}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    again = _fedgrove(prefect_server, "alerts", "install", "--block", f"custom-webhook/{name}")
    assert again.returncode == 0, again.stdout + again.stderr
    automations = prefect_server.api("POST", "/automations/filter", {})
    assert sorted(a["name"] for a in automations if a["name"].startswith("fedgrove")) == [
        "fedgrove - a federated training run failed", "fedgrove - a model was not promoted"]  # replaced, not added

    failed = subprocess.run(  # the coordinator flow itself, failing at its first step
        [sys.executable, "-c", "from flows.federated_training import RunOptions, federated_training; "
         "federated_training(None, RunOptions(run_id='no-such-run', resume=True))"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=prefect_server.client_environment({"FEDGROVE_WORK_DIR": str(tmp_path / "work")}))
    assert failed.returncode == 1 and "ResumeRefused" in failed.stderr, failed.stdout + failed.stderr
    body = _wait_for(webhook["received"], "failed")
    assert body["subject"].startswith("fedgrove: federated training run ")
    assert "run no-such-run cannot resume: there is no record of it" in body["body"]

    emitted = subprocess.run(
        [sys.executable, "-c",
         "from tasks.registry_events import announce_not_promoted; "
         "announce_not_promoted('week-50', 'accuracy_test 0.80 is 0.15 below production week-49 (0.95)')"],
        cwd=REPO_ROOT, env=prefect_server.client_environment(), capture_output=True, text=True, timeout=120)
    assert emitted.returncode == 0, emitted.stderr
    body = _wait_for(webhook["received"], "not promoted")
    assert body == {"subject": "fedgrove: the model of run week-50 was not promoted",
                    "body": "accuracy_test 0.80 is 0.15 below production week-49 (0.95)"}
