"""Tasks that talk to the aggregation server through the official `branchkey` client: connect, upload an
archive, wait for the aggregation it completes, download the result.

A `LeafSession` wraps the client with what the client's one-slot notification queue does not keep:
the aggregation ids this leaf has already loaded (so a stale or repeated id is ignored) and ids that
arrived before the leaf started waiting (so draining the queue before an upload loses nothing). Model
parameters (`save_weights`) and preprocessing sums (`save_fields`) travel the same way: one upload path,
one download path.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from branchkey import APIConfig, Client, RetryConfig
from prefect import get_run_logger, task

from fedgrove.privacy import SecureRound
from fedgrove.settings import LeafSettings
from fedgrove.weights_archive import write_weights_archive
from fedgrove_common.protocol import FEDERATED_ANALYTICS, LAYER_NAME, LAYER_PREFIX, PAYLOAD_KIND_KEY, WEIGHTING_KEY
from tasks.options import LOCAL, TRANSIENT



class AggregationTimeout(RuntimeError):
    """No aggregation arrived in time; Prefect retries the wait."""


class AggregateMismatch(ValueError):
    """The downloaded aggregate does not fit the local model, or is not the kind of archive expected."""


@dataclass
class LeafSession:
    client: Client
    leaf_name: str
    branch_id: str
    work_dir: Path
    loaded: set[str] = field(default_factory=set)
    loaded_in_order: list[str] = field(default_factory=list)  # what a checkpoint records
    pending: list[str] = field(default_factory=list)

    def mark_loaded(self, aggregation_id: str) -> None:
        if aggregation_id not in self.loaded:
            self.loaded.add(aggregation_id)
            self.loaded_in_order.append(aggregation_id)

    def resume_from(self, loaded: list[str]) -> None:
        """Take on the ids a checkpoint says this leaf loaded before it stopped."""
        for aggregation_id in loaded:
            self.mark_loaded(aggregation_id)

    def drain(self) -> None:
        while True:
            try:
                aggregation_id = self.client.queue.get_nowait()
            except queue.Empty:
                return
            if aggregation_id not in self.loaded and aggregation_id not in self.pending:
                self.pending.append(aggregation_id)

    def close(self) -> None:
        self.client.close()


@task(name="connect-leaf", **TRANSIENT)
def connect_leaf(settings: LeafSettings, work_dir: Path) -> LeafSession:
    work_dir.mkdir(parents=True, exist_ok=True)
    client = Client(
        settings.credentials(),
        # The client hands its `ssl` flag to the WebSocket too, which refuses it on a ws:// URL.
        api_config=APIConfig(host=settings.branchkey_host, ssl=settings.verify_ssl and settings.uses_tls),
        retry_config=RetryConfig(max_retries=2, backoff_factor=0.5, total_timeout=60),
        output_dir=str(work_dir / "downloads"),
    )
    if client.run_status != "start":
        get_run_logger().info("run of branch %s is %s; uploads wait for it to start", settings.branch_id,
                              client.run_status)
    return LeafSession(client=client, leaf_name=settings.leaf_name, branch_id=settings.branch_id, work_dir=work_dir)


def _upload(session: LeafSession, path: str) -> str:
    session.drain()
    try:
        return session.client.file_upload(path)
    finally:
        Path(path).unlink(missing_ok=True)


def _download(session: LeafSession, aggregation_id: str) -> dict[str, np.ndarray]:
    path = Path(session.client.file_download(aggregation_id))
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    finally:
        path.unlink(missing_ok=True)


@task(name="upload-parameters", **TRANSIENT)
def upload_parameters(
    session: LeafSession, parameters: list[np.ndarray], *, weighting: float, round_number: int,
    secure: SecureRound | None = None,
) -> str:
    """`save_weights`' archive (stored, not deflated: `fedgrove.weights_archive`) + `file_upload`. A retried
    upload replaces this leaf's earlier one on the server. With secure aggregation the layers and the weighting
    go masked, with protocol weighting 1."""
    if secure is not None:
        parameters, weighting = secure.mask(parameters, weighting, round_number), 1.0
    path = write_weights_archive(session.work_dir / f"round-{round_number}", weighting, parameters)
    return _upload(session, str(path))


@task(name="upload-sums", task_run_name="upload-sums-{step}", **TRANSIENT)
def upload_sums(session: LeafSession, sums: Mapping[str, np.ndarray], *, step: str) -> str:
    """`save_fields` + `file_upload` of one archive of sums. A retried upload replaces the earlier one."""
    path = session.client.save_fields(dict(sums), file_path=str(session.work_dir / f"preprocessing-{step}"))
    return _upload(session, path)


@task(name="wait-for-aggregation", retries=2, retry_delay_seconds=[1, 1], cache_policy=LOCAL["cache_policy"])
def wait_for_aggregation(session: LeafSession, *, round_number: int, timeout_s: float) -> str:
    """Block until an aggregation this leaf has not loaded yet is announced."""
    deadline = time.monotonic() + timeout_s
    while True:
        session.drain()
        while session.pending:
            aggregation_id = session.pending.pop()
            if aggregation_id not in session.loaded:  # a resumed leaf may have loaded it since it was announced
                return aggregation_id
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AggregationTimeout(
                f"no aggregation for round {round_number} of branch {session.branch_id} within {timeout_s:g} s; "
                f"not uploaded yet: {waiting_for(session)} (fix: check that those leaves are running, or raise "
                "FEDGROVE_AGGREGATION_TIMEOUT_S)"
            )
        try:
            aggregation_id = session.client.queue.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if aggregation_id not in session.loaded:
            return aggregation_id


def waiting_for(session: LeafSession) -> str:
    """The leaves the open aggregation still waits for, as the server's branch configuration tells them
    (a fedgrove aggregator does; another BranchKey server may not)."""
    try:
        config = session.client.get_branch_config()
        names = config["service"]["open_aggregation"]["waiting_for"]
    except Exception:  # best effort: this only decorates an error message
        return "unknown"
    return ", ".join(names) or "none"


def download_aggregate(
    session: LeafSession, aggregation_id: str, *, template: list[np.ndarray], secure: SecureRound | None = None,
    round_number: int = 0,
) -> list[np.ndarray]:
    """Download the aggregate and check it fits the local model (count, shapes, dtypes, finite values); with
    secure aggregation, unmask it (and check its masked checksum) first; the caller marks it loaded.
    Part of the `reload-and-evaluate` task (`tasks.reload`)."""
    if secure is None:
        layers = _aggregate_layers(session, aggregation_id, template)
    else:
        masked_template = [np.empty((2, *t.shape)) for t in template] + [np.empty(3)]
        layers = secure.unmask(_aggregate_layers(session, aggregation_id, masked_template), template, round_number)
    return layers


def _aggregate_layers(session: LeafSession, aggregation_id: str, template: list[np.ndarray]) -> list[np.ndarray]:
    archive = _download(session, aggregation_id)
    names = sorted((k for k in archive if LAYER_NAME.match(k)), key=lambda k: int(k.removeprefix(LAYER_PREFIX)))
    if len(names) != len(template):
        raise AggregateMismatch(f"aggregate {aggregation_id} has {len(names)} layers; the local model has "
                                f"{len(template)}")
    layers = [archive[name] for name in names]
    for index, (layer, local) in enumerate(zip(layers, template, strict=True)):
        if layer.shape != local.shape or layer.dtype != local.dtype:
            raise AggregateMismatch(
                f"aggregate {aggregation_id}: layer_{index} has shape {layer.shape} dtype {layer.dtype}; "
                f"the local model has {local.shape} {local.dtype}"
            )
        if not np.isfinite(layer).all():
            raise AggregateMismatch(f"aggregate {aggregation_id}: layer_{index} contains NaN or Inf")
    return layers


@task(name="load-pooled-sums", **TRANSIENT)
def load_pooled_sums(session: LeafSession, aggregation_id: str) -> dict[str, np.ndarray]:
    """Download a combined federated-analytics archive and mark it loaded."""
    fields = _download(session, aggregation_id)
    kind = fields.pop(PAYLOAD_KIND_KEY, None)
    fields.pop(WEIGHTING_KEY, None)
    if kind is None or str(kind.reshape(-1)[0]) != FEDERATED_ANALYTICS:
        raise AggregateMismatch(
            f"expected aggregation {aggregation_id} to be a {FEDERATED_ANALYTICS} archive, got "
            f"{'a federated_learning one' if kind is None else repr(str(kind))} (fix: start preprocessing on a "
            "branch whose open aggregation is empty, before any training round)"
        )
    session.mark_loaded(aggregation_id)
    return fields


class ResumeImpossible(RuntimeError):
    """A leaf cannot continue the run where it stopped; the message says why and what to do."""


@task(name="find-missed-aggregations", **TRANSIENT)
def missed_aggregations(session: LeafSession, *, last_loaded: str) -> list[str]:
    """The branch's aggregations that finished after `last_loaded` (the last one this leaf loaded before it
    stopped), oldest first: the rounds the others completed while it was away. A fedgrove aggregator lists
    them in the branch configuration; a server that does not cannot resume a run."""
    service = session.client.get_branch_config().get("service", {})
    finished = service.get("finished_aggregations")
    if finished is None:
        raise ResumeImpossible(
            f"the server of branch {session.branch_id} does not list its finished aggregations (a fedgrove "
            "aggregator does), so this leaf cannot find the rounds it missed (fix: start the run again without "
            "--resume)")
    if last_loaded not in finished:
        raise ResumeImpossible(
            f"branch {session.branch_id} no longer has aggregation {last_loaded}, the last one this leaf loaded: "
            "the aggregator's state of the run is gone (fix: start the run again without --resume)")
    return list(finished[finished.index(last_loaded) + 1:])


@task(name="report-performance", **TRANSIENT)
def report_performance(session: LeafSession, aggregation_id: str, metrics: dict[str, float | None]) -> bool:
    """Send the round's test metrics to the server's performance analysis."""
    return session.client.send_performance_metrics(aggregation_id, json.dumps(metrics), mode="test")
