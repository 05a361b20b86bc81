"""A Prefect S3Bucket block as a store: the artifact store (`FEDGROVE_ARTIFACTS=block:s3-bucket/<name>`), a site's
table and the aggregator's blob store; its bucket, folder, endpoint and AwsCredentials used against the loopback
S3 server, with no AWS variable set."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedgrove.artifacts import artifact_store_from_url
from fedgrove.demo import DemoOptions
from fedgrove_common.prefect_blocks import BlockNotUsable
from flows.federated_training import RunOptions, federated_training
from tests.s3_server import S3Server

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@pytest.fixture
def s3_bucket_block(prefect_api, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """An S3Bucket block (with an AwsCredentials block inside) on the loopback server; the environment holds
    no AWS credentials, so only the block's can work."""
    from prefect_aws import AwsCredentials, S3Bucket

    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = s3_server.make_bucket(f"blocks-{uuid.uuid4().hex[:8]}")
    name = f"runs-{uuid.uuid4().hex[:8]}"
    AwsCredentials(aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
                   region_name=s3_server.region,
                   aws_client_parameters={"endpoint_url": s3_server.endpoint_url}).save(f"{name}-aws")
    S3Bucket(bucket_name=bucket, bucket_folder="fedgrove/runs",
             credentials=AwsCredentials.load(f"{name}-aws")).save(name)
    return {"bucket": bucket, "name": name, "url": f"block:s3-bucket/{name}"}


def test_an_s3_bucket_block_stores_artifacts_where_it_says_with_its_own_credentials(
    s3_bucket_block: dict, s3_server: S3Server
) -> None:
    store = artifact_store_from_url(s3_bucket_block["url"])
    uri = store.write_json("week-49", "summary.json", {"accuracy_test": 0.95})
    bucket = s3_bucket_block["bucket"]
    assert uri == f"s3://{bucket}/fedgrove/runs/week-49/summary.json"
    assert json.loads(store.read_bytes("week-49", "summary.json")) == {"accuracy_test": 0.95}
    body = s3_server.client().get_object(Bucket=bucket, Key="fedgrove/runs/week-49/summary.json")["Body"].read()
    assert json.loads(body) == {"accuracy_test": 0.95}
    assert store.list("week-49") == ["summary.json"]
    assert s3_server.secret_key not in repr(store)


def test_a_block_reference_that_names_no_usable_block_is_refused_by_name(prefect_api) -> None:
    with pytest.raises(BlockNotUsable) as caught:
        artifact_store_from_url("block:s3-bucket/no-such-block")
    assert str(caught.value) == (
        "the artifact store URL names the S3Bucket block 'no-such-block', but the Prefect API has no such block (fix: "
        "create it, e.g. S3Bucket(bucket_name=..., credentials=...).save('no-such-block'), or check PREFECT_API_URL)")
    with pytest.raises(BlockNotUsable) as caught:
        artifact_store_from_url("block:secret/aws-keys")
    assert str(caught.value) == (
        "expected the artifact store URL like block:s3-bucket/<block-name>, got 'block:secret/aws-keys' (fix: name an "
        "S3Bucket block, e.g. block:s3-bucket/fedgrove-runs)")


@pytest.mark.slow
def test_a_federated_run_publishes_every_output_through_the_block(
    s3_bucket_block: dict, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", s3_bucket_block["url"])
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    summary = federated_training(None, RunOptions(run_id="through-a-block", demo=DemoOptions(sites=2, rounds=2)))
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket_block["bucket"],
                                                Prefix="fedgrove/runs/through-a-block/")
    names = {item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", [])}
    assert {"model.pt", "model.json", "summary.json", "epochs.csv", "result.png"} <= names
    assert summary["outputs"]["summary.json"] == (
        f"s3://{s3_bucket_block['bucket']}/fedgrove/runs/through-a-block/summary.json")
    assert not (tmp_path / "runs").exists()


def test_a_sites_table_is_read_through_a_block_with_the_blocks_own_credentials(
    s3_bucket_block: dict, s3_server: S3Server
) -> None:
    from fedgrove.sources import DataSource, SourceError, read_source

    table = pd.DataFrame({"age": [51, 63, 47], "outcome": ["yes", "no", "yes"]})
    s3_server.client().put_object(Bucket=s3_bucket_block["bucket"], Key="fedgrove/runs/site-a/table.csv",
                                  Body=table.to_csv(index=False).encode())
    source = DataSource.parse(f"{s3_bucket_block['url']}/site-a/table.csv")
    assert source.public_description() == "a CSV file on S3"
    pd.testing.assert_frame_equal(read_source(source), table)
    with pytest.raises(SourceError) as caught:  # a key S3 URLs cannot carry: refused, not a traceback
        read_source(DataSource.parse(f"{s3_bucket_block['url']}/site-a/table?version=2.csv"))
    assert str(caught.value) == (
        "expected FEDGROVE_SITE_DATA to name a usable Prefect S3Bucket block, got one that could not be loaded (fix: "
        "read the full error on the site's own terminal)")
    assert caught.value.detail.startswith(f"loading {s3_bucket_block['url']} for FEDGROVE_SITE_DATA failed: ")


def test_a_site_data_block_reference_of_the_wrong_shape_or_naming_no_block_is_refused_exactly(prefect_api) -> None:
    from fedgrove.sources import DataSource, SourceError, read_source

    with pytest.raises(SourceError) as caught:
        DataSource.parse("block:s3-bucket/table.csv")
    assert (str(caught.value), caught.value.detail) == (
        "expected a block reference like block:s3-bucket/<block>/<folder>/table.csv, got one of another shape (fix: "
        "name an S3Bucket block and the file's key under its folder in FEDGROVE_SITE_DATA)",
        "expected a block reference like block:s3-bucket/<block>/<folder>/table.csv, got 'block:s3-bucket/table.csv' "
        "(fix: name an S3Bucket block and the file's key under its folder in FEDGROVE_SITE_DATA)")
    with pytest.raises(SourceError) as caught:
        read_source(DataSource.parse("block:s3-bucket/no-such-block/site-a/table.parquet"))
    assert (str(caught.value), caught.value.detail) == (
        "expected FEDGROVE_SITE_DATA to name a usable Prefect S3Bucket block, got one that could not be loaded (fix: "
        "read the full error on the site's own terminal)",
        "FEDGROVE_SITE_DATA names the S3Bucket block 'no-such-block', but the Prefect API has no such block (fix: "
        "create it, e.g. S3Bucket(bucket_name=..., credentials=...).save('no-such-block'), or check PREFECT_API_URL)")


def test_the_aggregator_keeps_its_blobs_in_a_blocks_bucket_with_the_blocks_credentials(
    s3_bucket_block: dict, s3_server: S3Server, tmp_path: Path
) -> None:
    """FEDGROVE_BLOB_URL=block:s3-bucket/<name>: uploads and the aggregate go under the block's folder, and the
    official client downloads the aggregate through the presigned link; no AWS variable is set."""
    from branchkey import APIConfig, Client, Credentials, RetryConfig

    from aggregator.config import AggregatorSettings
    from aggregator.server import ServerThread
    from tests.aggregator_fixtures import wait_until_connected

    settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, blob_url=s3_bucket_block["url"],
                                  _env_file=None)
    with ServerThread(settings) as server:
        _tree, _branch, credentials = server.context.registry.create_branch(tree="t", branch="blocks", leaves=2)
        clients = [Client(Credentials(**vars(c)), api_config=APIConfig(host=server.url, ssl=False),
                          retry_config=RetryConfig(max_retries=0), output_dir=str(tmp_path / c.name))
                   for c in credentials]
        try:
            for c in credentials:
                wait_until_connected(server, c)
            for index, (client, weighting, value) in enumerate(zip(clients, (3.0, 1.0), (1.0, 5.0), strict=True)):
                client.file_upload(client.save_weights(str(tmp_path / f"w{index}"), weighting,
                                                       [np.full((4,), value, np.float32)]))
            aggregation_id = clients[0].queue.get(timeout=10)
            with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
                np.testing.assert_array_equal(archive["layer_0"], np.full((4,), 2.0, np.float32))  # (3·1 + 1·5) / 4
        finally:
            for client in clients:
                client.close()
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket_block["bucket"], Prefix="fedgrove/runs/")
    assert f"fedgrove/runs/{aggregation_id}" in {item["Key"] for item in listed.get("Contents", [])}
    assert not (tmp_path / "aggregator" / "blobs").exists()


def test_an_aggregator_blob_store_block_that_names_no_block_is_refused_by_name(prefect_api, tmp_path: Path) -> None:
    from aggregator.blobstore import blob_store_from_url
    from aggregator.blobstore_errors import BlobStoreError

    with pytest.raises(BlobStoreError) as caught:
        blob_store_from_url("block:s3-bucket/no-such-blobs", data_dir=tmp_path)
    assert str(caught.value) == (
        "FEDGROVE_BLOB_URL names the S3Bucket block 'no-such-blobs', but the Prefect API has no such block (fix: "
        "create it, e.g. S3Bucket(bucket_name=..., credentials=...).save('no-such-blobs'), or check PREFECT_API_URL)")
