"""The official branchkey client against the real server: rounds of FedAvg and of federated analytics."""

from __future__ import annotations

import io
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from sqlalchemy import select

from aggregator.admin_client import AdminClient
from aggregator.blobstore_errors import BlobStoreUnavailable
from aggregator.config import AggregatorSettings
from aggregator.db import Aggregation
from aggregator.rounds import AggregationService
from aggregator.server import ServerThread
from tests.database_backends import on_both_databases
from tests.fedavg_oracle import weighted_mean_float64
from tests.store_faults import finalise_fails_once
from tests.upload_helpers import branch_state, npz_bytes, upload


def _layers(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]


def _upload_all(clients, tmp_path: Path, contributions) -> None:
    errors: list[BaseException] = []

    def upload(index: int) -> None:
        try:
            weighting, layers = contributions[index]
            path = clients[index].save_weights(str(tmp_path / f"leaf-{index}"), weighting, layers)
            clients[index].file_upload(path)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@on_both_databases
def test_five_leaves_in_threads_get_the_weighted_mean_for_three_rounds(branch, leaf_client, tmp_path):
    credentials = branch(leaves=5)
    clients = [leaf_client(c) for c in credentials]
    rng = np.random.default_rng(7)
    seen: set[str] = set()
    for round_number in range(1, 4):
        contributions = [(float(rng.integers(20, 200)), _layers(rng)) for _ in clients]
        round_dir = tmp_path / f"round-{round_number}"
        round_dir.mkdir()
        _upload_all(clients, round_dir, contributions)
        expected = weighted_mean_float64(contributions)
        ids = set()
        for client in clients:
            aggregation_id = client.queue.get(timeout=10)
            ids.add(aggregation_id)
            with np.load(client.file_download(aggregation_id), allow_pickle=False) as archive:
                assert sorted(archive.files) == ["layer_0", "layer_1"]
                for index, layer in enumerate(expected):
                    np.testing.assert_allclose(archive[f"layer_{index}"], layer, rtol=1e-6, atol=1e-7)
                    assert archive[f"layer_{index}"].dtype == np.float32
        assert len(ids) == 1 and not ids & seen
        seen |= ids


@on_both_databases
def test_the_aggregate_is_weighted_and_summed_in_float64(branch, leaf_client, tmp_path):
    """Three leaves upload in turn. Weighting 1 + 2**-30 is 1 in float32, so float32 products lose layer_0's
    2**-30; and 2**24 + 1 is no float32, so a float32 running sum of layer_1 loses the 1. Expected values are
    computed by hand: the float64 numerators and the total weighting are exact, one rounding to float32."""
    credentials = branch(leaves=3)
    clients = [leaf_client(c) for c in credentials]
    uploads = [(1 + 2**-30, [1.0, 2.0**24]), (1.0, [-1.0, 1.0]), (1.0, [0.0, -(2.0**24)])]
    for index, (client, (weighting, values)) in enumerate(zip(clients, uploads, strict=True)):
        layers = [np.full(3, value, np.float32) for value in values]
        client.file_upload(client.save_weights(str(tmp_path / f"leaf-{index}"), weighting, layers))

    aggregation_id = clients[0].queue.get(timeout=10)

    total = 3 + 2**-30
    with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["layer_0"], np.full(3, np.float32(2**-30 / total)))
        np.testing.assert_array_equal(archive["layer_1"], np.full(3, np.float32((1 + 2**-6) / total)))


@on_both_databases
def test_reupload_replaces_the_leafs_contribution_and_is_not_counted_twice(aggregator, branch, leaf_client, tmp_path):
    credentials = branch(leaves=2)
    first, second = (leaf_client(c) for c in credentials)
    rng = np.random.default_rng(1)
    stale, fresh, other = _layers(rng), _layers(rng), _layers(rng)
    first.file_upload(first.save_weights(str(tmp_path / "stale"), 10.0, stale))
    first.file_upload(first.save_weights(str(tmp_path / "fresh"), 30.0, fresh))
    status = aggregator.context.service.open_round(credentials[0].branch_id)
    assert status == (1, [credentials[0].id])
    second.file_upload(second.save_weights(str(tmp_path / "other"), 10.0, other))
    aggregation_id = second.queue.get(timeout=10)
    expected = weighted_mean_float64([(30.0, fresh), (10.0, other)])
    with np.load(second.file_download(aggregation_id), allow_pickle=False) as archive:
        for index, layer in enumerate(expected):
            np.testing.assert_allclose(archive[f"layer_{index}"], layer, rtol=1e-6)


def _first_round_of_two(branch, leaf_client, tmp_path: Path, *, seed: int):  # type: ignore[no-untyped-def]
    """A branch of two leaves whose first round the second leaf completes: (credentials, that leaf's
    client, its layers, its archive's path, its file id)."""
    credentials = branch(leaves=2)
    first, second = (leaf_client(c) for c in credentials)
    rng = np.random.default_rng(seed)
    mine = _layers(rng)
    first.file_upload(first.save_weights(str(tmp_path / "first"), 10.0, _layers(rng)))
    path = second.save_weights(str(tmp_path / "second"), 20.0, mine)
    file_id = second.file_upload(path)
    second.queue.get(timeout=10)
    return credentials, second, mine, path, file_id


@on_both_databases
def test_a_retried_upload_of_the_archive_that_completed_a_round_is_answered_and_not_counted_again(
    aggregator, branch, leaf_client, tmp_path
):
    """The 201 of the upload that completed round 1 was lost and the leaf sends the archive again: the
    server answers with the same file id and round 2 stays empty. New parameters are counted."""
    credentials, second, mine, completing, file_id = _first_round_of_two(branch, leaf_client, tmp_path, seed=3)
    service, branch_id = aggregator.context.service, credentials[0].branch_id
    rng = np.random.default_rng(30)

    assert second.file_upload(completing) == file_id
    rezipped = tmp_path / "stored.npz"  # the same arrays, zipped without compression
    np.savez(rezipped, weighting=np.array([20.0]), layer_0=mine[0], layer_1=mine[1])
    assert rezipped.read_bytes() != Path(completing).read_bytes()
    assert second.file_upload(str(rezipped)) == file_id
    assert service.open_round(branch_id) == (2, [])

    assert second.file_upload(second.save_weights(str(tmp_path / "new"), 20.0, _layers(rng))) != file_id
    assert service.open_round(branch_id) == (2, [credentials[1].id])


def _forge_crc32(data: bytes, at: int, target: int) -> bytes:
    """`data` with its 4 bytes at `at` replaced so that its CRC-32 is `target` (the CRC is affine in the data)."""
    def with_patch(value: int) -> int:
        return zlib.crc32(data[:at] + value.to_bytes(4, "little") + data[at + 4 :])

    base = with_patch(0)
    rows = [(with_patch(1 << bit) ^ base, 1 << bit) for bit in range(32)]  # (effect on the CRC, patch)
    want, patch = target ^ base, 0
    for bit in range(32):  # Gaussian elimination over GF(2)
        pivot = next(i for i in range(bit, 32) if rows[i][0] >> bit & 1)
        rows[bit], rows[pivot] = rows[pivot], rows[bit]
        for i in range(32):
            if i != bit and rows[i][0] >> bit & 1:
                rows[i] = (rows[i][0] ^ rows[bit][0], rows[i][1] ^ rows[bit][1])
    for bit in range(32):
        if want >> bit & 1:
            patch ^= rows[bit][1]
    forged = data[:at] + patch.to_bytes(4, "little") + data[at + 4 :]
    assert zlib.crc32(forged) == target
    return forged


def test_an_archive_whose_crcs_collide_with_the_last_rounds_is_still_counted(aggregator, branch, leaf_client, tmp_path):
    """The fingerprint (entry CRC-32s and sizes) only proposes a repeat: different values are counted."""
    credentials, second, mine, saved, file_id = _first_round_of_two(branch, leaf_client, tmp_path, seed=4)

    buffer = io.BytesIO()
    np.save(buffer, mine[1])
    npy = buffer.getvalue()
    header = len(npy) - mine[1].nbytes
    changed = mine[1].copy()
    changed[-1] += 1.0  # other values; then the first value is chosen so that the CRC is the old one
    edited = npy[:header] + changed.tobytes()
    forged = np.frombuffer(_forge_crc32(edited, header, zlib.crc32(npy))[header:], dtype=mine[1].dtype)
    assert np.isfinite(forged).all() and not np.array_equal(forged, mine[1])
    colliding = second.save_weights(str(tmp_path / "colliding"), 20.0, [mine[0], forged.copy()])
    with zipfile.ZipFile(colliding) as new, zipfile.ZipFile(saved) as old:
        assert [(i.filename, i.CRC) for i in new.infolist()] == [(i.filename, i.CRC) for i in old.infolist()]

    assert second.file_upload(colliding) != file_id
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (2, [credentials[1].id])


def test_save_analytics_round_pools_count_mean_and_variance_like_numpy(branch, leaf_client, tmp_path):
    credentials = branch(leaves=3)
    clients = [leaf_client(c) for c in credentials]
    rng = np.random.default_rng(3)
    columns = [
        {"age": rng.normal(50, 10, size=n), "dose": rng.uniform(0, 5, size=n)} for n in (40, 75, 12)
    ]
    for index, client in enumerate(clients):
        client.file_upload(client.save_analytics(columns[index], file_path=str(tmp_path / f"analytics-{index}")))
    aggregation_id = clients[0].queue.get(timeout=10)
    with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
        for name in ("age", "dose"):
            pooled = np.concatenate([c[name] for c in columns])
            n = archive[f"{name}_n"][0]
            mean = archive[f"{name}_sum"][0] / n
            variance = archive[f"{name}_sumsq"][0] / n - mean**2
            assert n == pooled.size
            assert archive[f"{name}_nan"][0] == 0
            np.testing.assert_allclose(mean, pooled.mean(), rtol=1e-12)
            np.testing.assert_allclose(variance, pooled.var(), rtol=1e-9)
            assert archive[f"{name}_min"][0] == pooled.min()
            assert archive[f"{name}_max"][0] == pooled.max()


@pytest.mark.parametrize("operation", ["sum", "min", "max", "must_match"])
def test_save_fields_are_combined_by_the_branch_operation(operation, branch, leaf_client, tmp_path):
    credentials = branch(leaves=2, analytics_default_op=operation)
    clients = [leaf_client(c) for c in credentials]
    values = [np.array([1.0, 5.0, 3.0]), np.array([2.0, 4.0, 3.0])]
    if operation == "must_match":
        values = [np.array([2.0, 4.0, 3.0])] * 2
    for index, client in enumerate(clients):
        client.file_upload(client.save_fields({"spacing": values[index]}, file_path=str(tmp_path / f"f{index}")))
    aggregation_id = clients[0].queue.get(timeout=10)
    expected = {
        "sum": values[0] + values[1],
        "min": np.minimum(values[0], values[1]),
        "max": np.maximum(values[0], values[1]),
        "must_match": values[0],
    }[operation]
    with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["spacing"], expected)


def test_an_upload_whose_aggregation_cannot_be_finished_keeps_its_contribution(tmp_path, monkeypatch):
    """The upload that completes an aggregation is committed before the aggregate is written. When writing
    it fails (the blob store down), that upload's row and blob stay, and the aggregation is finished after
    a restart, even one while the store is still down for a moment: nothing is lost."""
    settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None)
    contributions = [(3.0, [np.full((2, 2), 1.0, np.float32)]), (1.0, [np.full((2, 2), 5.0, np.float32)])]
    bodies = [npz_bytes({"weighting": np.array(w), "layer_0": layers[0]}) for w, layers in contributions]

    def store_down(*_args: object) -> None:
        raise BlobStoreUnavailable("injected: the store is down")

    with ServerThread(settings) as server:
        _tree, branch_id, leaves = server.context.registry.create_branch(tree="t", branch="b", leaves=2)
        assert upload(server.url, leaves[0], bodies[0]).status_code == 201
        monkeypatch.setattr(server.context.service, "_finalise", store_down)

        refused = upload(server.url, leaves[1], bodies[1])

        assert (refused.status_code, refused.json()) == (503, {"error": "blob store unavailable; try again later"})
        state = branch_state(server, branch_id)
        assert state.open_round == (1, sorted(leaf.id for leaf in leaves))
        assert len(state.blobs) == 2 and state.blobs == state.referenced

    monkeypatch.undo()
    failures = finalise_fails_once(AggregationService, monkeypatch, "injected: still down at start-up")
    with ServerThread(settings) as restarted:  # starts although the round it recovers cannot be finished yet
        deadline = time.monotonic() + 10
        while True:
            with restarted.context.sessions() as session:
                finished = session.scalars(select(Aggregation).where(Aggregation.status == "complete")).all()
            if finished or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(failures) == 1
        assert [aggregation.contributors for aggregation in finished] == [2]
        with restarted.context.blobs.open_local(finished[0].id) as path, np.load(path, allow_pickle=False) as aggregate:
            np.testing.assert_allclose(aggregate["layer_0"], weighted_mean_float64(contributions)[0], rtol=1e-6)


def test_a_full_round_whose_aggregate_could_not_be_stored_is_finished_once_the_store_is_back(
    aggregator, branch, leaf_client, tmp_path, monkeypatch
):
    """Writing the aggregate fails once (the store down) for the upload that completes the round: that
    upload is refused with a 503, and the server itself finishes the round about a second later and
    notifies both leaves, without either of them uploading again."""
    credentials = branch(leaves=2)
    clients = [leaf_client(c) for c in credentials]
    contributions = [(3.0, _layers(np.random.default_rng(1))), (1.0, _layers(np.random.default_rng(2)))]
    failures = finalise_fails_once(aggregator.context.service, monkeypatch, "injected: the store is down")
    paths = [client.save_weights(str(tmp_path / f"leaf-{i}"), weighting, layers)
             for i, (client, (weighting, layers)) in enumerate(zip(clients, contributions, strict=True))]
    clients[0].file_upload(paths[0])
    with pytest.raises(Exception, match="blob store unavailable; try again later"):
        clients[1].file_upload(paths[1])

    notified = [client.queue.get(timeout=10) for client in clients]

    assert len(failures) == 1
    assert notified[0] == notified[1]
    with np.load(clients[0].file_download(notified[0]), allow_pickle=False) as aggregate:
        for index, expected in enumerate(weighted_mean_float64(contributions)):
            np.testing.assert_allclose(aggregate[f"layer_{index}"], expected, rtol=1e-6)
    state = branch_state(aggregator, credentials[0].branch_id)
    assert state.open_round == (2, [])


def _run(aggregator: ServerThread, branch_id: str, status: str) -> dict:
    with AdminClient(aggregator.url, aggregator.context.admin_token) as admin:  # raises on any error status
        return admin.set_run_status(branch_id, status)


@on_both_databases
def test_a_stopped_runs_uploads_are_set_aside_and_the_next_run_averages_only_its_own(
    aggregator, branch, leaf_client, tmp_path
):
    """An upload made before `stop` belonged to the run that ended: the next run's first aggregate must not
    average it in (it did). It is kept, row and blob, but never averaged. A pause keeps the round as it is."""
    credentials = branch(leaves=2)
    first, second = (leaf_client(c) for c in credentials)
    branch_id = credentials[0].branch_id
    stale = (9.0, [np.full((4, 7), 100.0, np.float32), np.full(7, 100.0, np.float32)])
    fresh = [(3.0, _layers(np.random.default_rng(1))), (1.0, _layers(np.random.default_rng(2)))]
    first.file_upload(first.save_weights(str(tmp_path / "stale"), *stale))
    _run(aggregator, branch_id, "pause")
    _run(aggregator, branch_id, "start")
    assert aggregator.context.service.open_round(branch_id) == (1, [credentials[0].id])

    _run(aggregator, branch_id, "stop")

    assert _run(aggregator, branch_id, "start") == {"run_status": "start", "run_number": 2}
    assert aggregator.context.service.open_round(branch_id) == (2, [])
    state = branch_state(aggregator, branch_id)
    assert state.blobs == state.referenced  # the set-aside upload's blob is still there, and accounted for
    _upload_all([first, second], tmp_path, fresh)
    aggregation_id = first.queue.get(timeout=10)
    with np.load(first.file_download(aggregation_id), allow_pickle=False) as archive:
        for index, expected in enumerate(weighted_mean_float64(fresh)):
            np.testing.assert_allclose(archive[f"layer_{index}"], expected, rtol=1e-6)
    with aggregator.context.sessions() as session:
        statuses = sorted(session.scalars(select(Aggregation.status).where(Aggregation.branch_id == branch_id)))
    assert statuses == ["complete", "open", "set_aside"]
