"""Flower's own venv for the peers benchmark: `bench/peers/.venv-flower`, made once and reused.

Why this module exists: Flower (with Ray) must never become a dependency of the project nor share its venv,
so the benchmark installs it beside the project, pinned: `flwr[simulation]` 1.41.0 is the newest release this
machine's index resolves (1.42 needs a certifi release the index lacks), with ray 2.55.1. torch is pinned to
2.13.0, whose CPU build lies on this machine's disk; the install is refused if pip brought any other build
(a CUDA torch is a multi-GB download). The environment every Flower process gets is here too: telemetry,
update checks and Ray's usage reporting off, Flower's home in the benchmark's scratch folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VENV = Path(__file__).resolve().with_name(".venv-flower")
PINS = ("flwr[simulation]==1.41.0", "torch==2.13.0", "numpy")
INSTALL_TIMEOUT_S = 1800.0


class FlowerVenvError(RuntimeError):
    """The Flower venv could not be made as pinned."""


def python() -> Path:
    return VENV / "bin" / "python"


def executable(name: str) -> Path:
    return VENV / "bin" / name


def _marker() -> Path:
    return VENV / ".installed"


def ensure_flower_venv(interpreter: str = "python3.11") -> Path:
    """Create or reuse the venv; returns its python. Reused when its marker names the same pins."""
    wanted = "\n".join(PINS) + "\n"
    if _marker().exists() and _marker().read_text() == wanted and python().exists():
        return python()
    if VENV.exists():
        shutil.rmtree(VENV)
    found = shutil.which(interpreter)
    if found is None:
        raise FlowerVenvError(f"expected {interpreter} on PATH to make Flower's venv")
    subprocess.run([found, "-m", "venv", str(VENV)], check=True, timeout=300)
    done = subprocess.run([str(python()), "-m", "pip", "install", "--quiet", *PINS],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise FlowerVenvError(f"pip install {' '.join(PINS)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    check = subprocess.run(
        [str(python()), "-c", "import flwr, ray, torch; print(flwr.__version__, ray.__version__, torch.__version__, "
                              "torch.version.cuda)"],
        capture_output=True, text=True, timeout=300)
    versions = check.stdout.split()
    if check.returncode != 0 or len(versions) != 4 or versions[3] != "None" or versions[0] != "1.41.0":
        raise FlowerVenvError(f"Flower's venv is not as pinned (flwr ray torch cuda: {check.stdout.strip()!r}; "
                              f"a CUDA torch or another flwr was installed): {check.stderr[-2000:]}")
    _marker().write_text(wanted)
    return python()


def versions() -> dict[str, str]:
    done = subprocess.run([str(python()), "-c", "import flwr, ray, torch; print(flwr.__version__, ray.__version__, "
                                                "torch.__version__)"],
                          capture_output=True, text=True, timeout=300, check=True)
    flwr, ray, torch = done.stdout.split()
    return {"flwr": flwr, "ray": ray, "torch": torch}


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """For every Flower process: no telemetry, no update check, no Ray usage report, a home of its own."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FLWR_", "RAY_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update({
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(flwr_home),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    return env
