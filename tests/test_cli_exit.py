"""The `fedgrove` command's exit: its exit handlers still run, and its objects are frozen first so that the
interpreter's last collection skips them (it took 1.2-1.4 s of every command's exit)."""

from __future__ import annotations

import subprocess
import sys

EXIT_PROBE = """
import atexit, gc, sys
from fedgrove_cli import main
atexit.register(lambda: print("exit handler ran; frozen objects:", gc.get_freeze_count() > 0, flush=True))
sys.argv = ["fedgrove", "split", "--help"]
main()
"""


def test_the_command_freezes_its_objects_at_exit_and_still_runs_its_exit_handlers() -> None:
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "exit handler ran; frozen objects: True"


def test_the_console_script_is_main() -> None:
    """`fedgrove` (the installed script) and `python -m fedgrove_cli` both go through `main`."""
    from importlib.metadata import entry_points

    (script,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "fedgrove"]
    assert script.value == "fedgrove_cli:main"
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE.replace("from fedgrove_cli import main\n", "").replace(
        "main()", "import runpy; runpy.run_module('fedgrove_cli', run_name='__main__')")],
        capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "exit handler ran; frozen objects: True"
