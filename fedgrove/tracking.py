"""Metrics and run configuration to AskAnna, through the official SDK (`askanna==0.24.0`).

`track_round` records a leaf's four metrics once per round, labelled with the epoch and the leaf;
`track_run_configuration` records the run's configuration as run variables, secrets left out.

Inside an AskAnna run (the platform sets AA_RUN_SUUID, AA_REMOTE and AA_TOKEN) the SDK itself pushes what it
collected only at process exit; here every call also pushes at once (`PUT /v1/run/<suuid>/metric/<suuid>/`
with the whole metric list, `PATCH .../variable/<suuid>/` with the whole variable list), so the run page shows
each round as it ends. Outside a run nothing goes to the network: the SDK keeps its JSON files in
`$TMPDIR/askanna/run/<id>/`.

Leaf flows run in threads of one process and share the SDK's collectors, so appends are serialised, and
pushes too: a push sends a snapshot taken after the caller's append, so when `track_round` returns that
round has reached AskAnna (or a warning says why not; a later push or the exit push sends it again).
Leaves that finish a round together share one push. Metrics and variables are shown to everyone in the
project: never pass a secret, and `track_run_configuration` refuses anything that looks like one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Secret, SecretBytes, SecretStr

logger = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 15.0
"""Seconds the SDK's HTTP calls may wait on the AskAnna API (the SDK sets none: a hung API would stall
every leaf at the end of its round)."""

SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "credential")
"""A configuration entry whose name contains one of these (any case) is never sent."""

_SECRET_TYPES = (SecretStr, SecretBytes, Secret)
_SHORTEST_SECRET = 6  # shorter values of secret-named environment variables ("1", "true") are not matched
_PLAIN_TYPES = (bool, int, float, str, datetime, date, time)
_REFUSED = object()  # marks a value that is not sent


@dataclass
class _Outbox:
    tracked: int = 0  # calls whose entries were appended to the SDK's collector
    pushed: int = 0  # calls whose entries the last successful push carried


_collect_lock = threading.Lock()  # guards the SDK's collectors (a list and a JSON file each)
_push_lock = threading.Lock()  # one push at a time, each with a newer snapshot than the last
_metrics = _Outbox()
_variables = _Outbox()
_timeout_installed = False


TRACKED_METRICS = ("accuracy", "loss", "accuracy_test", "loss_test")
"""The four metrics of the BranchKey–AskAnna guide, per epoch and leaf; for a regression accuracy is RMSE."""
TRACKED_REGRESSION_METRICS = ("rmse", "loss", "rmse_test", "loss_test")


def track_round(metrics: Mapping[str, float | None], *, epoch: int, leaf_name: str, task: str = "binary") -> None:
    """Record one round of one leaf (the four tracked metrics of `metrics`; an undefined value is left out);
    inside an AskAnna run, push it before returning."""
    import askanna  # imported late: it reads the nearest .env and configures itself on import
    from askanna.sdk.track import metric_collector

    names = TRACKED_REGRESSION_METRICS if task == "regression" else TRACKED_METRICS
    values = {name: metrics[name] for name in names if metrics.get(name) is not None}
    with _collect_lock, _local_file_written_at_exit(metric_collector):
        askanna.track_metrics(values, label={"epoch": epoch, "leaf": leaf_name})
        _metrics.tracked += 1
        mine = _metrics.tracked
    if metric_collector.run_suuid:
        _push(_metrics, metric_collector, what="metrics", upto=mine)


@contextmanager
def _local_file_written_at_exit(collector: Any) -> Iterator[None]:
    """Skip the SDK's rewrite of its whole JSON file after every metric it appends (O(n) per metric: 90 ms a
    call by round 50 of 5 leaves, all of it under `_collect_lock`). The SDK still writes the file at exit, and
    `_push` writes it when a push fails; inside an AskAnna run each round is pushed anyway."""
    collector.save_local = lambda: None  # an instance attribute shadows the method; removed below
    try:
        yield
    finally:
        del collector.save_local


def track_run_configuration(config: Mapping[str, object] | BaseModel) -> dict[str, object]:
    """Record the run's configuration (nested entries as `parent.child`) as AskAnna run variables.

    Left out, never sent (not even masked): entries named like a secret (`SECRET_WORDS`), `SecretStr` /
    `SecretBytes` values, strings containing the value of a secret-named environment variable, URLs with a
    password, and values of types AskAnna cannot store. Returns the variables it recorded."""
    import askanna
    from askanna.sdk.track import variable_collector

    variables, left_out = public_configuration(config)
    if left_out:
        logger.warning(
            "left %d configuration entr%s out of the AskAnna run variables (secret-looking or unsupported): %s",
            len(left_out), "y" if len(left_out) == 1 else "ies", ", ".join(left_out),
        )
    with _collect_lock:
        askanna.track_variables(variables)
        _variables.tracked += 1
        mine = _variables.tracked
    if variable_collector.run_suuid:
        _push(_variables, variable_collector, what="variables", upto=mine)
    return variables


def public_configuration(config: Mapping[str, object] | BaseModel) -> tuple[dict[str, object], list[str]]:
    """Split a configuration into the variables that may be shown and the names of the entries left out."""
    secrets = _secret_environment_values()
    variables: dict[str, object] = {}
    left_out: list[str] = []
    for name, value in _flatten(config):
        public = _REFUSED if _looks_secret(name, value) else _plain(value, secrets)
        if public is _REFUSED:
            left_out.append(name)
        else:
            variables[name] = public
    return variables, left_out


def _flatten(config: Mapping[str, object] | BaseModel, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(config, BaseModel):
        config = dict(config)  # fields as they are: a SecretStr stays a SecretStr
    items: list[tuple[str, object]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping | BaseModel) and not _name_is_secret(name):
            items.extend(_flatten(value, prefix=f"{name}."))
        else:
            items.append((name, value))
    return items


def _name_is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def _secret_environment_values() -> list[str]:
    return [
        value for name, value in os.environ.items() if _name_is_secret(name) and len(value) >= _SHORTEST_SECRET
    ]


def _string_is_secret(value: str, secrets: list[str]) -> bool:
    if any(secret in value for secret in secrets):
        return True
    if "://" in value:
        try:
            return urlsplit(value).password is not None
        except ValueError:
            return True
    return False


def _looks_secret(name: str, value: object) -> bool:
    return _name_is_secret(name) or isinstance(value, _SECRET_TYPES)


def _plain(value: object, secrets: list[str]) -> object:
    """The value in a type the SDK stores, or `_REFUSED` (secret inside, or no faithful plain form)."""
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    elif isinstance(value, PurePath):
        value = str(value)
    elif hasattr(value, "item") and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, str):
        return _REFUSED if _string_is_secret(value, secrets) else value
    if isinstance(value, bool | int | float) and not value:
        return str(value).lower() if isinstance(value, bool) else str(value)  # the SDK stores 0 and False as null
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(item, secrets) for item in value]
        if any(item is _REFUSED or isinstance(item, list) for item in items):
            return _REFUSED
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return _REFUSED


def _push(outbox: _Outbox, collector: Any, *, what: str, upto: int) -> None:
    """Send the collector's whole list, unless a push whose snapshot already held call number `upto` succeeded."""
    from askanna.core.exceptions import Error as AskAnnaError
    from askanna.gateways.run import RunGateway
    from requests import RequestException

    _install_push_timeout()
    with _push_lock:
        if outbox.pushed >= upto:
            return
        with _collect_lock:
            covered = outbox.tracked
            snapshot = type(collector.data_collection)(list(collector.data_collection))
        gateway = RunGateway()
        update: Callable[[str, Any], None] = gateway.metric_update if what == "metrics" else gateway.variable_update
        try:
            update(collector.run_suuid, snapshot)
        except (AskAnnaError, RequestException, ValueError) as exc:
            with _collect_lock:
                collector.save_local()
            _warn(
                "could not push %s to AskAnna run %s (%s); they are kept in %s and sent again with the next "
                "push and at exit", what, collector.run_suuid, exc, collector.collector_file,
            )
            return
        outbox.pushed = covered


def _install_push_timeout() -> None:
    """Give the SDK's HTTP session a default timeout (it calls `requests` without one)."""
    global _timeout_installed
    if _timeout_installed:
        return
    from askanna.gateways.api_client import client
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = PUSH_TIMEOUT_S
            return super().send(request, **kwargs)

    with _push_lock:
        if not _timeout_installed:
            adapter = _TimeoutAdapter()
            client.session.mount("http://", adapter)
            client.session.mount("https://", adapter)
            _timeout_installed = True


def _warn(message: str, *args: object) -> None:
    """To the Prefect run log when called inside a flow or task run, else to this module's logger."""
    if "prefect" in sys.modules:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            get_run_logger().warning(message, *args)
            return
        except MissingContextError:
            pass
    logger.warning(message, *args)
