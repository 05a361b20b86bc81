"""A server that stops while its round-timeout check is running in a worker thread: the check finishes and
returns its database connection before the pool is disposed. Before, the pool was disposed at once, and the
check's connection, handed back to the disposed pool, stayed open until the garbage collector found it; on
PostgreSQL psycopg then warned of it in whatever test ran next."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from tests.database_backends import on_both_databases

RELEASE_AFTER_S = 1.0  # long after an unfixed shutdown would have disposed the pool


@on_both_databases
def test_a_check_running_at_shutdown_returns_its_connection_before_the_pool_is_disposed(
    tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, database_url=database_url,
                                  _env_file=None)
    server = ServerThread(settings).start()
    context = server.context
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []
    real_check, real_dispose = context.service.finalise_overdue, context.engine.dispose

    def check_holding_a_connection():  # type: ignore[no-untyped-def]
        with context.engine.connect():
            inside.set()
            release.wait(30)
        order.append("the check returned its connection")
        return real_check()

    def dispose(*args, **kwargs):  # type: ignore[no-untyped-def]
        order.append(f"the pool was disposed with {context.engine.pool.checkedout()} connection(s) checked out")
        return real_dispose(*args, **kwargs)

    monkeypatch.setattr(context.service, "finalise_overdue", check_holding_a_connection)
    monkeypatch.setattr(context.engine, "dispose", dispose)
    assert inside.wait(30)
    timer = threading.Timer(RELEASE_AFTER_S, release.set)
    timer.start()
    try:
        server.stop()
    finally:
        release.set()
        timer.cancel()
    assert order == ["the check returned its connection",
                     "the pool was disposed with 0 connection(s) checked out"]
