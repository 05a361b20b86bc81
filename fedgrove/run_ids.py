"""What a run id may be, checked wherever one comes in: the CLI's `--run-id` and `--resume`, and a flow
run's `run.run_id` parameter.

Why this module exists: a run id names the run's folder, its artifacts and its registry entry, so it must be
a safe file name; and `latest`, `production` and `none` are what `--model`, `models` and `init_from` take as
the registry's pointers or as "no warm start", so a run with one of those ids could never be named.
"""

from __future__ import annotations

import re

RUN_ID_RULE = "1-64 characters from [A-Za-z0-9._-], not '.' or '..'"
RESERVED_RUN_IDS = {"latest": "the registry's newest completed run", "production": "the registry's production run",
                    "none": "a training that starts from scratch (init_from)"}
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def run_id_problem(value: str) -> str | None:
    """Why `value` cannot be a run id, or None if it can."""
    if _RUN_ID.fullmatch(value) is None or value in {".", ".."}:
        return f"expected {RUN_ID_RULE}"
    if value in RESERVED_RUN_IDS:
        return f"{value!r} already means {RESERVED_RUN_IDS[value]}, so a run of that id could never be named"
    return None
