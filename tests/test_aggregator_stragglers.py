"""Stragglers: a branch's round timeout with a quorum (`min_leaves`), and what a waiting leaf is told."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import select

from aggregator.db import Aggregation
from tests.store_faults import finalise_fails_once
from tasks.exchange import AggregationTimeout, LeafSession, wait_for_aggregation
from tests.database_backends import on_both_databases
from tests.fedavg_oracle import weighted_mean_float64


def _upload(client, tmp_path, name: str, weighting: float, value: float) -> list[np.ndarray]:
    layers = [np.full((3,), value, np.float32)]
    client.file_upload(client.save_weights(str(tmp_path / name), weighting, layers))
    return layers


@on_both_databases
def test_after_the_round_timeout_a_quorum_is_aggregated_and_the_missing_leaf_recorded(
    aggregator, branch, leaf_client, tmp_path
):
    credentials = branch(leaves=3, round_timeout_s=1.0, min_leaves=2)
    clients = [leaf_client(c) for c in credentials]
    first = _upload(clients[0], tmp_path, "a", 10.0, 1.0)
    second = _upload(clients[1], tmp_path, "b", 30.0, 3.0)
    uploaded_at = time.monotonic()
    aggregation_id = clients[0].queue.get(timeout=10)
    assert time.monotonic() - uploaded_at >= 0.5  # it waited for the timeout, not for the third leaf
    assert clients[1].queue.get(timeout=5) == aggregation_id
    assert clients[2].queue.get(timeout=5) == aggregation_id  # the straggler is told too
    with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
        np.testing.assert_allclose(archive["layer_0"], weighted_mean_float64([(10.0, first), (30.0, second)])[0])
    with aggregator.context.sessions() as session:
        row = session.get(Aggregation, aggregation_id)
        assert row.missing_leaves == [credentials[2].id]
        assert row.contributors == 2
    _upload(clients[2], tmp_path, "late", 5.0, 9.0)
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (2, [credentials[2].id])


def test_a_timed_out_round_whose_aggregate_could_not_be_stored_is_finished_when_the_store_is_back(
    aggregator, branch, leaf_client, tmp_path, monkeypatch, caplog
):
    credentials = branch(leaves=3, round_timeout_s=0.3, min_leaves=2)
    clients = [leaf_client(c) for c in credentials]
    failures = finalise_fails_once(aggregator.context.service, monkeypatch, "injected: the store is down")
    first = _upload(clients[0], tmp_path, "a", 10.0, 1.0)
    second = _upload(clients[1], tmp_path, "b", 30.0, 3.0)

    aggregation_id = clients[0].queue.get(timeout=10)

    assert len(failures) == 1
    assert [client.queue.get(timeout=5) for client in clients[1:]] == [aggregation_id, aggregation_id]
    with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
        np.testing.assert_allclose(archive["layer_0"], weighted_mean_float64([(10.0, first), (30.0, second)])[0])
    warnings = [r.getMessage() for r in caplog.records if r.name == "aggregator.rounds" and r.levelname == "WARNING"]
    assert warnings == [f"branch {credentials[0].branch_id}: its round is due but the aggregate could not be "
                        "stored (injected: the store is down); trying again in 1 s"]


@on_both_databases
def test_below_the_quorum_the_round_keeps_waiting_after_the_timeout(aggregator, branch, leaf_client, tmp_path):
    credentials = branch(leaves=3, round_timeout_s=0.3, min_leaves=2)
    client = leaf_client(credentials[0])
    _upload(client, tmp_path, "only", 1.0, 1.0)
    time.sleep(1.5)
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (1, [credentials[0].id])
    with aggregator.context.sessions() as session:
        assert session.scalars(select(Aggregation).where(Aggregation.status == "complete")).all() == []


def test_without_a_timeout_a_branch_waits_for_every_leaf_as_branchkey_does(aggregator, branch, leaf_client, tmp_path):
    credentials = branch(leaves=2)
    client = leaf_client(credentials[0])
    _upload(client, tmp_path, "only", 1.0, 1.0)
    assert aggregator.context.service.finalise_overdue(now=time.time() + 10 * 365 * 86400) == []


def test_a_waiting_leaf_times_out_naming_the_branch_the_round_and_the_leaves_not_uploaded(
    branch, leaf_client, tmp_path
):
    credentials = branch(leaves=3)
    client = leaf_client(credentials[0])
    _upload(client, tmp_path, "a", 1.0, 1.0)
    session = LeafSession(client=client, leaf_name=credentials[0].name, branch_id=credentials[0].branch_id,
                          work_dir=tmp_path)
    with pytest.raises(AggregationTimeout) as raised:
        wait_for_aggregation.fn(session, round_number=1, timeout_s=0.2)
    assert str(raised.value) == (
        f"no aggregation for round 1 of branch {credentials[0].branch_id} within 0.2 s; not uploaded yet: "
        f"{credentials[1].name}, {credentials[2].name} (fix: check that those leaves are running, or raise "
        "FEDGROVE_AGGREGATION_TIMEOUT_S)"
    )


@on_both_databases
def test_a_leaf_resending_its_last_rounds_archive_is_answered_with_the_original_and_not_counted_again(
    aggregator, branch, leaf_client, tmp_path
):
    credentials = branch(leaves=2)
    clients = [leaf_client(c) for c in credentials]
    layers = [np.full((3,), 2.0, np.float32)]
    path = clients[0].save_weights(str(tmp_path / "mine"), 4.0, layers)
    original = clients[0].file_upload(path)
    _upload(clients[1], tmp_path, "other", 4.0, 4.0)
    clients[0].queue.get(timeout=10)
    again = clients[0].save_weights(str(tmp_path / "mine-again"), 4.0, layers)  # re-zipped, same content
    assert clients[0].file_upload(again) == original
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (2, [])


def test_a_federated_analytics_round_waits_for_every_leaf_whatever_the_timeout(
    aggregator, branch, leaf_client, tmp_path
):
    credentials = branch(leaves=3, round_timeout_s=0.2, min_leaves=2)
    clients = [leaf_client(c) for c in credentials[:2]]
    for index, client in enumerate(clients):
        client.file_upload(client.save_analytics({"age": np.arange(12.0)}, file_path=str(tmp_path / f"a{index}")))
    time.sleep(1.2)
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (
        1, sorted(c.id for c in credentials[:2])
    )
