"""The coordinator's record of a run it started, so that `--resume RUN_ID` (or a Prefect retry) continues
that run and only that run.

Why this module exists: a resumed run must train what the interrupted one trained. The record keeps the spec
the run settled on (on the coordinator's machine; in sites mode without any source), the demo's options and
whether the run finished, in `<work>/runs/<run id>/run.json`. A resume compares the spec it is given with the
recorded one and refuses, naming every key that differs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedgrove.demo import DemoOptions
from fedgrove.spec import FederationSpec
from fedgrove_common.atomic_files import replace_durably, staged

FORMAT = 1
RECORD_FILE = "run.json"
MAX_DIFFERENCES_NAMED = 8


class ResumeRefused(ValueError):
    """The run cannot resume as asked; the message names the run, the reason and the fix."""


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    run_id: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    mode: Literal["local", "sites"]
    spec: FederationSpec
    demo: DemoOptions | None = None  # the demo's options when the run had no spec of its own
    warm_start: str | None = None  # the registered run whose model it started from (train.init_from)
    finished: bool = False


def write_run_record(work: Path, record: RunRecord) -> None:
    with staged(work) as (temp, handle):
        handle.write(record.model_dump_json(indent=2).encode())
    replace_durably(temp, work / RECORD_FILE)


def read_run_record(work: Path, run_id: str) -> RunRecord:
    """The record of the run to resume; refused when there is none, it cannot be read, or the run finished."""
    path = work / RECORD_FILE
    if not path.is_file():
        raise ResumeRefused(f"run {run_id} cannot resume: there is no record of it at {path} (fix: check the run id "
                            f"against the folders in {work.parent}, and FEDGROVE_WORK_DIR)")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResumeRefused(f"run {run_id} cannot resume: its record {path} cannot be read ({exc}) (fix: start the "
                            "run again without --resume)") from exc
    if isinstance(document, dict) and isinstance(document.get("format"), int) and document["format"] > FORMAT:
        raise ResumeRefused(f"run {run_id} cannot resume: its record {path} has format {document['format']}, newer "
                            f"than this fedgrove's {FORMAT} (fix: resume with the fedgrove version that started it)")
    try:
        record = RunRecord.model_validate(document)
    except ValidationError as exc:
        raise ResumeRefused(f"run {run_id} cannot resume: its record {path} is not a run record "
                            f"({exc.errors()[0]['msg']}) (fix: start the run again without --resume)") from exc
    if record.finished:
        raise ResumeRefused(f"run {run_id} finished already: there is nothing to resume (fix: start a new run "
                            "without --resume)")
    return record


def refuse_changed_spec(record: RunRecord, spec: FederationSpec) -> None:
    differences = differences_between(record.spec.model_dump(mode="json"), spec.model_dump(mode="json"))
    if differences:
        shown = differences[:MAX_DIFFERENCES_NAMED]
        more = f" and {len(differences) - len(shown)} more" if len(differences) > len(shown) else ""
        raise ResumeRefused(f"run {record.run_id} cannot resume with a different spec: {'; '.join(shown)}{more} (fix: "
                            "resume with the spec it started with, or start a new run without --resume)")


def refuse_changed_mode(record: RunRecord, mode: str) -> None:
    if mode != record.mode:
        raise ResumeRefused(f"run {record.run_id} cannot resume in {mode} mode: it started in {record.mode} mode (fix: "
                            f"resume it in {record.mode} mode)")


def refuse_changed_demo(record: RunRecord, demo: DemoOptions) -> None:
    """A demo resumed with options other than its own (the defaults stand for "as recorded")."""
    if record.demo is None or demo == DemoOptions() or demo == record.demo:
        return
    differences = differences_between(record.demo.model_dump(mode="json"), demo.model_dump(mode="json"), prefix="demo.")
    raise ResumeRefused(f"run {record.run_id} cannot resume with different demo options: {'; '.join(differences)} "
                        "(fix: resume without them, or start a new run without --resume)")


def differences_between(before: Any, after: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf value that differs, keys in dotted form."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                found.append(f"{prefix}{key}: {_shown(before[key])} -> (absent)")
            elif key not in before:
                found.append(f"{prefix}{key}: (absent) -> {_shown(after[key])}")
            else:
                found += differences_between(before[key], after[key], f"{prefix}{key}.")
        return found
    if before != after:
        return [f"{prefix.rstrip('.')}: {_shown(before)} -> {_shown(after)}"]
    return []


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
