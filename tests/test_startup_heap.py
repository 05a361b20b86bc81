"""What a process imports at start is frozen out of the collector's full collections: in the command's own
process, in Prefect's temporary server and in the aggregator (`fedgrove_common.startup_heap`).

The process-wide cases run in a fresh process each: the collector's state belongs to the interpreter."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgrove_common.startup_heap import startup_imports

# A process that imported Prefect's server, or the pipeline, tracks hundreds of thousands of objects.
IMPORTED_OBJECTS = 100_000


@pytest.fixture
def collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_the_block_runs_without_collection_and_what_it_made_is_frozen_after(collector_restored: None) -> None:
    gc.enable()
    gc.unfreeze()
    with startup_imports():
        inside = gc.isenabled()
        made = [[index] for index in range(5_000)]
    assert (inside, gc.isenabled()) == (False, True)
    assert gc.get_freeze_count() >= len(made)


def test_collection_stays_off_when_it_was_off_before(collector_restored: None) -> None:
    gc.disable()
    with startup_imports():
        pass
    assert gc.isenabled() is False


def test_a_block_that_raises_still_freezes_and_turns_collection_back_on(collector_restored: None) -> None:
    gc.enable()
    gc.unfreeze()
    with pytest.raises(ImportError, match="no such module"), startup_imports():
        raise ImportError("no such module")
    assert gc.isenabled() is True
    assert gc.get_freeze_count() > 0


STATE = "print(json.dumps({'frozen': gc.get_freeze_count(), 'collecting': gc.isenabled()}))"


def frozen_in_fresh_process(code: str, tmp_path: Path, **extra: str) -> int:
    """Runs `code` (which prints STATE where it is checked) in a fresh process; the collector must be on
    there, and the number of frozen objects is returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
    done = subprocess.run([sys.executable, "-c", "import gc, json\n" + code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["collecting"] is True
    return state["frozen"]


def test_a_run_command_freezes_what_the_pipeline_imported_before_its_flow_starts(tmp_path: Path) -> None:
    code = f"from fedgrove_cli.run_commands import prefect_api\nwith prefect_api(verbose=False):\n    {STATE}\n"
    assert frozen_in_fresh_process(code, tmp_path) > IMPORTED_OBJECTS


def test_prefects_temporary_server_freezes_its_app_and_modules(tmp_path: Path) -> None:
    code = f"from fedgrove.prefect_server_app import create_app\napp = create_app()\n{STATE}\n"
    database = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    assert frozen_in_fresh_process(code, tmp_path, PREFECT_SERVER_DATABASE_CONNECTION_URL=database) \
        > IMPORTED_OBJECTS


def test_the_aggregator_freezes_its_app_before_it_serves(tmp_path: Path) -> None:
    settings = f"AggregatorSettings(data_dir={str(tmp_path / 'aggregator')!r}, port=0, _env_file=None)"
    code = (f"import aggregator.server as server\nfrom aggregator.config import AggregatorSettings\n"
            f"server._Server.run = lambda self, sockets=None: {STATE}\nserver.serve_forever({settings})\n")
    # The aggregator imports no Prefect, torch or pandas: fewer objects, still far more than none.
    assert frozen_in_fresh_process(code, tmp_path) > IMPORTED_OBJECTS / 10
