"""`ProgressReporter`: the newest value reaches the real Prefect API, reporting never waits for the API, and a
failing API costs a warning, not the run."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client

import fedgrove.progress
from fedgrove.progress import ProgressReporter

LOGGER = logging.getLogger("test-progress")


def read_progress(artifact_id) -> float:
    with get_client(sync_client=True) as client:
        [artifact] = [a for a in client.read_artifacts() if a.id == artifact_id]
    return artifact.data


@flow
def report_in_a_flow(values: list[float]):
    artifact_id = create_progress_artifact(progress=0.0, key="test-progress-reporter")
    reporter = ProgressReporter(artifact_id, logger=LOGGER)
    for value in values:
        reporter.report(value)
    reporter.close()
    return artifact_id


def test_the_last_reported_value_is_on_the_server_after_close(prefect_api):
    artifact_id = report_in_a_flow([10.0, 20.0, 55.5, 100.0])
    assert read_progress(artifact_id) == 100.0


def test_report_returns_while_the_api_call_is_still_running_and_only_the_newest_value_follows(monkeypatch):
    sent: list[float] = []
    first_call_started, release = threading.Event(), threading.Event()

    def slow_update(artifact_id, progress):
        first_call_started.set()
        assert release.wait(30), "the test never released the stand-in API call"
        sent.append(progress)

    monkeypatch.setattr(fedgrove.progress, "update_progress_artifact", slow_update)
    reporter = ProgressReporter("00000000-0000-0000-0000-000000000001", logger=LOGGER)
    reporter.report(2.0)
    assert first_call_started.wait(30)
    for value in (4.0, 6.0, 8.0):  # the sender is blocked in the first call: these must not wait for it
        reporter.report(value)
    assert sent == []
    release.set()
    reporter.close()
    assert sent == [2.0, 8.0]


def test_a_failing_api_is_a_warning_and_later_values_are_still_sent(monkeypatch, caplog):
    sent: list[float] = []
    first_failed = threading.Event()

    def flaky_update(artifact_id, progress):
        if not first_failed.is_set():
            first_failed.set()
            raise RuntimeError("503 Service Unavailable")
        sent.append(progress)

    monkeypatch.setattr(fedgrove.progress, "update_progress_artifact", flaky_update)
    with caplog.at_level(logging.WARNING, logger="test-progress"):
        reporter = ProgressReporter("00000000-0000-0000-0000-000000000002", logger=LOGGER)
        reporter.report(10.0)
        assert first_failed.wait(30)
        reporter.report(20.0)
        reporter.close()
    assert sent == [20.0]
    assert [r.getMessage() for r in caplog.records] == [
        "progress artifact 00000000-0000-0000-0000-000000000002: update to 10% failed: 503 Service Unavailable"
    ]


@pytest.mark.parametrize("artifact_id", ["not-a-uuid", ""])
def test_an_artifact_id_that_is_not_a_uuid_is_refused_at_once(artifact_id):
    with pytest.raises(ValueError) as refused:
        ProgressReporter(artifact_id, logger=LOGGER)
    assert str(refused.value) == (f"progress artifact id {artifact_id!r} is not a UUID "
                                  "(fix: pass the id that create_progress_artifact returned)")


def test_updates_are_at_least_the_interval_apart_and_the_newest_value_is_the_one_sent(monkeypatch):
    sent: list[tuple[float, float]] = []
    first_sent, second_sent = threading.Event(), threading.Event()

    def update(artifact_id, progress):
        sent.append((time.monotonic(), progress))
        (first_sent if len(sent) == 1 else second_sent).set()

    monkeypatch.setattr(fedgrove.progress, "update_progress_artifact", update)
    reporter = ProgressReporter("00000000-0000-0000-0000-000000000003", logger=LOGGER, min_interval_s=0.3)
    reporter.report(1.0)
    assert first_sent.wait(30)
    for value in (2.0, 3.0, 4.0):  # within the interval of the first update: only the newest is sent, later
        reporter.report(value)
    assert second_sent.wait(30)
    reporter.report(5.0)
    reporter.close()  # the last value goes at once, interval or not
    assert [progress for _, progress in sent] == [1.0, 4.0, 5.0]
    assert sent[1][0] - sent[0][0] >= 0.3
