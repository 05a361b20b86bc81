"""S3 of record, over HTTP (a real `rclone serve s3` on loopback): the aggregator's blobs with presigned
downloads for the official client, and a coordinator run publishing its outputs to a bucket."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from fedgrove.demo import DemoOptions
from flows.federated_training import RunOptions, federated_training
from tests.aggregator_fixtures import wait_until_connected
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import branch_state, npz_bytes, upload


def test_aggregator_on_an_s3_blob_store_hands_the_official_client_presigned_downloads(s3_env, s3_server, tmp_path):
    from branchkey import APIConfig, Client, Credentials, RetryConfig

    settings = AggregatorSettings(
        data_dir=tmp_path / "aggregator", port=0, blob_url=f"s3://{s3_env}/blobs", _env_file=None
    )
    with ServerThread(settings) as server:
        _tree, _branch, credentials = server.context.registry.create_branch(tree="t", branch="s3", leaves=2)
        clients = [
            Client(Credentials(**vars(c)), api_config=APIConfig(host=server.url, ssl=False),
                   retry_config=RetryConfig(max_retries=0), output_dir=str(tmp_path / c.name))
            for c in credentials
        ]
        try:
            for c in credentials:
                wait_until_connected(server, c)
            contributions = [(3.0, [np.full((4,), 1.0, np.float32)]), (1.0, [np.full((4,), 5.0, np.float32)])]
            for index, (client, (weighting, layers)) in enumerate(zip(clients, contributions, strict=True)):
                client.file_upload(client.save_weights(str(tmp_path / f"w{index}"), weighting, layers))
            aggregation_id = clients[0].queue.get(timeout=10)
            with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
                np.testing.assert_allclose(archive["layer_0"], weighted_mean_float64(contributions)[0])
            headers = {"Authorization": f"Bearer {credentials[1].id}:{credentials[1].session_token}"}
            link = httpx.get(f"{server.url}/api/v1/file/download/{aggregation_id}", headers=headers).json()
            url = link["data"]["download_url"]
            assert url.startswith(s3_server.endpoint_url) and "Signature" in url
            assert not (tmp_path / "aggregator" / "blobs").exists()  # nothing went to the local folder
        finally:
            for client in clients:
                client.close()
    stored = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_env).get("Contents", [])}
    assert f"blobs/{aggregation_id}" in stored and len(stored) == 3  # two uploads and the aggregate


def test_an_upload_the_s3_store_cannot_take_is_503_leaves_nothing_and_is_taken_once_the_store_is_back(
    s3_env, s3_server, tmp_path, caplog
):
    """The store takes an upload while the archive is decoded: when the store fails and the archive is
    good, the upload is refused as a whole (no row, no scratch file, no object) and can simply be sent
    again."""
    settings = AggregatorSettings(
        data_dir=tmp_path / "aggregator", port=0, blob_url=f"s3://{s3_env}/blobs", _env_file=None
    )
    body = npz_bytes({"weighting": np.array(2.0), "layer_0": np.ones((3, 4), np.float32)})
    with ServerThread(settings) as server:
        _tree, branch_id, credentials = server.context.registry.create_branch(tree="t", branch="s3", leaves=2)
        s3_server.client().delete_bucket(Bucket=s3_env)

        refused = upload(server.url, credentials[0], body)

        assert (refused.status_code, refused.json()) == (503, {"error": "blob store unavailable; try again later"})
        assert f"bucket '{s3_env}'" in caplog.text  # the operator's log names what is missing
        assert server.context.service.open_round(branch_id) == (1, [])
        assert branch_state(server, branch_id).scratch == frozenset()

        s3_server.make_bucket(s3_env)
        taken = upload(server.url, credentials[0], body)

        assert taken.status_code == 201
        assert server.context.service.open_round(branch_id) == (1, [credentials[0].id])
    stored = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_env).get("Contents", [])}
    assert stored == {f"blobs/{taken.json()['data']['file_id']}"}


@pytest.mark.slow
def test_coordinator_publishes_its_outputs_to_an_s3_bucket(prefect_api, s3_env, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", f"s3://{s3_env}/runs")
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    summary = federated_training(None, RunOptions(run_id="to-s3", demo=DemoOptions(sites=2, rounds=2)))
    assert summary["outputs"]["summary.json"] == f"s3://{s3_env}/runs/to-s3/summary.json"
    s3 = s3_server.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="runs/to-s3/")["Contents"]}
    for name in ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json"):
        assert f"runs/to-s3/{name}" in keys
    stored = json.loads(s3.get_object(Bucket=s3_env, Key="runs/to-s3/summary.json")["Body"].read())
    assert stored["rounds"] == 2 and set(stored["sites"]) == {"site-1", "site-2"}
