"""`fedgrove demo` on Prefect's temporary server: started by the demo, on an in-memory database unless
Prefect is configured, and gone when the demo ends.

Each case runs in a fresh process, because Prefect reads its settings once, at import."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


ROOT = Path(__file__).resolve().parents[1]
PREFECT_VARIABLES = ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                     "PREFECT_PROFILES_PATH", "PREFECT_HOME", "FEDGROVE_PREFECT_EPHEMERAL_DATABASE")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PREFECT_VARIABLES and not k.startswith("PREFECT__")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def chosen(tmp_path: Path, mode: str, **extra: str) -> dict[str, bool] | None:
    """What `fedgrove demo` decides in a fresh process with this environment: no temporary server (None), or
    one with its database in memory or not."""
    code = (
        "import json\n"
        "from fedgrove.prefect_ephemeral import temporary_server_for\n"
        f"server = temporary_server_for({mode!r})\n"
        "print(json.dumps(None if server is None else {'in_memory': server.in_memory}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(tmp_path, **extra), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unconfigured_prefect_gets_a_temporary_server_on_an_in_memory_database(tmp_path: Path) -> None:
    assert chosen(tmp_path, "memory") == {"in_memory": True}


def test_file_mode_gets_a_temporary_server_on_prefects_database_file(tmp_path: Path) -> None:
    assert chosen(tmp_path, "file") == {"in_memory": False}


def test_a_configured_prefect_api_gets_no_temporary_server(tmp_path: Path) -> None:
    assert chosen(tmp_path, "memory", PREFECT_API_URL="http://127.0.0.1:4200/api") is None


def test_prefect_with_ephemeral_mode_disabled_gets_no_temporary_server(tmp_path: Path) -> None:
    """Prefect then refuses to run a flow without an API URL, and says so; the demo does not override that."""
    assert chosen(tmp_path, "memory", PREFECT_SERVER_EPHEMERAL_ENABLED="false") is None


def test_a_database_of_the_users_own_is_the_one_the_server_uses(tmp_path: Path) -> None:
    own = f"sqlite+aiosqlite:///{tmp_path / 'mine.db'}"
    assert chosen(tmp_path, "memory", PREFECT_SERVER_DATABASE_CONNECTION_URL=own) == {"in_memory": False}


def test_a_database_in_the_active_profile_is_the_one_the_server_uses(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
                        f'PREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///{tmp_path / "p.db"}"\n')
    assert chosen(tmp_path, "memory", PREFECT_PROFILES_PATH=str(profiles)) == {"in_memory": False}


def test_a_profile_without_ephemeral_mode_gets_no_temporary_server(tmp_path: Path) -> None:
    """Prefect's ephemeral mode is on only in its default profile; a profile of the user's own without it
    means no temporary server (Prefect itself then asks for an API URL)."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_LEVEL = "INFO"\n')
    assert chosen(tmp_path, "memory", PREFECT_PROFILES_PATH=str(profiles)) is None


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "database_files"), [("memory", False), ("file", True)])
def test_the_demo_runs_on_the_ephemeral_server(tmp_path: Path, mode: str, database_files: bool) -> None:
    """`make demo`'s path, not the test harness: no Prefect configured, the demo starts Prefect's temporary
    server, whose database is in memory by default and `$PREFECT_HOME/prefect.db` with
    FEDGROVE_PREFECT_EPHEMERAL_DATABASE=file, and which has stopped when the demo returns."""
    command = [str(Path(sys.executable).with_name("fedgrove")), "demo", "--sites", "2", "--rounds", "2",
               "--out", str(tmp_path / "runs"), "--run-id", "ephemeral"]
    env = clean_env(tmp_path, FEDGROVE_WORK_DIR=str(tmp_path / "work"), FEDGROVE_PREFECT_EPHEMERAL_DATABASE=mode)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ephemeral" / "summary.json").read_text())
    assert (summary["rounds"], sorted(summary["sites"])) == (2, ["site-1", "site-2"])
    output = done.stderr + done.stdout
    started = re.search(r"Starting Prefect's temporary server on (http://127\.0\.0\.1:(\d+)/api)", output)
    assert started, output[-3000:]
    assert "Starting temporary server" not in output  # Prefect did not start a second one for the flow
    assert bool(list((tmp_path / "prefect-home").glob("prefect.db*"))) is database_files
    # Quiet by default: what the official client and the AskAnna SDK print goes to the debug log.
    for noise in ("downloaded file", "received resp code", "run SUUID is not set", "Starting WebSocket Consumer",
                  "Failed to send telemetry"):
        assert noise not in output, noise
    assert not re.search(r"Task run '[^']+' - Finished in state Completed", output), "a line per task run"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started.group(1)}/health", timeout=5)


def test_the_temporary_servers_event_socket_is_not_compressed(tmp_path: Path) -> None:
    """Every task run sends its state changes over this socket; on loopback, per-message deflate only costs
    CPU on both ends. The client offers it, as Prefect's events client does; the server must decline."""
    from websockets.sync.client import connect

    from fedgrove.prefect_ephemeral import TemporaryPrefectServer

    server = TemporaryPrefectServer(in_memory=True).start()
    try:
        server.wait_until_ready()
        url = server.api_url.replace("http://", "ws://") + "/events/in"
        with connect(url, compression="deflate", open_timeout=30) as socket:
            offered = socket.request.headers.get("Sec-WebSocket-Extensions")
            accepted = socket.response.headers.get("Sec-WebSocket-Extensions")
    finally:
        server.stop()
    assert offered is not None and "permessage-deflate" in offered
    assert accepted is None


SEVEN_TASK_RUNS = """
from prefect import flow, task

@task
def step(number: int) -> int:
    return number

@flow(name="seven-steps")
def seven_steps() -> None:
    for number in range(7):
        step(number)

seven_steps()
"""


def test_the_in_memory_server_records_every_task_run_in_batches_and_keeps_no_event_feed(tmp_path: Path) -> None:
    """Nobody can look at an in-memory temporary server after its run: it keeps no event feed, but it still
    records every task run (in batches, at most a second late)."""
    from fedgrove.prefect_ephemeral import TemporaryPrefectServer

    server = TemporaryPrefectServer(in_memory=True).start()
    try:
        server.wait_until_ready()
        env = clean_env(tmp_path, PREFECT_API_URL=server.api_url)
        subprocess.run([sys.executable, "-c", SEVEN_TASK_RUNS], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, check=True)
        deadline, recorded = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            recorded = httpx.post(f"{server.api_url}/task_runs/count", json={}, timeout=30).json()
            if recorded == 7:
                break
            time.sleep(0.5)
        events = httpx.post(f"{server.api_url}/events/filter", json={"limit": 50}, timeout=30).json()
    finally:
        server.stop()
    assert recorded == 7
    assert events["total"] == 0, [event["event"] for event in events["events"]]


def flow_names(api_url: str) -> list[str]:
    response = httpx.post(f"{api_url}/flows/filter", json={}, timeout=30)
    response.raise_for_status()
    return sorted(flow["name"] for flow in response.json())


def test_the_in_memory_database_starts_from_a_migrated_copy_that_holds_no_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The first start builds `$PREFECT_HOME/fedgrove/prefect-<version>-schema.db` once; every start copies it
    into a new in-memory database, so what one run wrote is gone at the next."""
    import prefect

    from fedgrove.prefect_ephemeral import TemporaryPrefectServer

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    template = tmp_path / "prefect-home" / "fedgrove" / f"prefect-{prefect.__version__}-schema.db"
    names = []
    for flow_name in ("first-run", "second-run"):
        server = TemporaryPrefectServer(in_memory=True).start()
        try:
            server.wait_until_ready()
            assert template.is_file()
            httpx.post(f"{server.api_url}/flows/", json={"name": flow_name}, timeout=30).raise_for_status()
            names.append(flow_names(server.api_url))
        finally:
            server.stop()
    assert names == [["first-run"], ["second-run"]]
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]
    assert "fedgrove: could not" not in capfd.readouterr().err


def test_a_damaged_template_is_removed_and_prefect_migrates_the_in_memory_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import prefect

    from fedgrove.prefect_ephemeral import TemporaryPrefectServer

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    template = tmp_path / "prefect-home" / "fedgrove" / f"prefect-{prefect.__version__}-schema.db"
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database" * 100)
    server = TemporaryPrefectServer(in_memory=True).start()
    try:
        server.wait_until_ready()
        httpx.post(f"{server.api_url}/flows/", json={"name": "migrated-by-prefect"}, timeout=30).raise_for_status()
        assert flow_names(server.api_url) == ["migrated-by-prefect"]
    finally:
        server.stop()
    assert (f"fedgrove: could not copy {template} into Prefect's in-memory database (file is not a database); "
            "removed it, the next start builds it again; Prefect migrates the database this time"
            ) in capfd.readouterr().err
    assert not template.exists()


EARLY_START = """
import json, os
from fedgrove.prefect_ephemeral import start_before_prefect_settings, temporary_server_for
early = start_before_prefect_settings()
early_pid = None if early is None else early.process.pid
server = temporary_server_for({mode!r}, started=early)
alive = early is not None and early.process is not None and early.process.poll() is None
heartbeat = None
if server is not None and server is early:
    from prefect.settings import get_current_settings
    with server.serving():
        heartbeat = get_current_settings().flows.heartbeat_frequency
print(json.dumps({{"early": early_pid is not None, "kept": server is not None and server is early,
                  "server": None if server is None else {{"in_memory": server.in_memory}},
                  "early_alive_after_settling": alive, "heartbeat_while_serving": heartbeat}}))
if server is not None and server is not early:
    server.stop()
"""


def settled_early(tmp_path: Path, mode: str, **extra: str) -> dict:
    """What the demo's first step starts before Prefect's settings import, and what it keeps once they are read
    (in a fresh process: Prefect reads its settings once)."""
    done = subprocess.run([sys.executable, "-c", EARLY_START.format(mode=mode)], env=clean_env(tmp_path, **extra),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_server_started_before_prefects_settings_is_kept_and_its_runs_send_no_heartbeats(tmp_path: Path) -> None:
    assert settled_early(tmp_path, "memory") == {
        "early": True, "kept": True, "server": {"in_memory": True}, "early_alive_after_settling": True,
        "heartbeat_while_serving": None}


def test_a_heartbeat_frequency_the_user_set_is_kept(tmp_path: Path) -> None:
    settled = settled_early(tmp_path, "memory", PREFECT_FLOWS_HEARTBEAT_FREQUENCY="45")
    assert (settled["kept"], settled["heartbeat_while_serving"]) == (True, 45)


def test_a_server_started_early_that_the_active_profile_does_not_want_is_stopped(tmp_path: Path) -> None:
    """The environment alone said "no API configured"; the profile names one: the early server goes."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert settled_early(tmp_path, "memory", PREFECT_PROFILES_PATH=str(profiles)) == {
        "early": True, "kept": False, "server": None, "early_alive_after_settling": False,
        "heartbeat_while_serving": None}


def test_a_server_started_early_on_memory_is_replaced_when_the_profile_names_a_database(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
                        f'PREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///{tmp_path / "p.db"}"\n')
    assert settled_early(tmp_path, "memory", PREFECT_PROFILES_PATH=str(profiles)) == {
        "early": True, "kept": False, "server": {"in_memory": False}, "early_alive_after_settling": False,
        "heartbeat_while_serving": None}


@pytest.mark.parametrize("extra", [{"PREFECT_API_URL": "http://127.0.0.1:4200/api"},
                                   {"FEDGROVE_PREFECT_EPHEMERAL_DATABASE": "file"},
                                   {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///mine.db"}])
def test_nothing_starts_early_when_the_environment_names_an_api_a_database_or_the_file_mode(
    tmp_path: Path, extra: dict[str, str]
) -> None:
    """Only an in-memory server starts before the settings are read: stopping it loses nothing."""
    assert settled_early(tmp_path, "file" if "FEDGROVE_PREFECT_EPHEMERAL_DATABASE" in extra else "memory",
                         **extra)["early"] is False
