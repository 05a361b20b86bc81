"""The registry as rows and markdown: what `fedgrove models list` prints and what the Prefect UI shows.

Why this module exists: the terminal table and the Prefect table artifact show the same columns, and the
promotion's markdown artifact says the same thing as the run's log line; both are built here, from the index
alone, with no I/O.
"""

from __future__ import annotations

from fedgrove.promotion import primary_metric
from fedgrove.registry import PromotionOutcome, RegistryIndex, RunEntry

HEADINGS = {"promoted": "Promoted to production", "kept": "Not promoted: production stays",
            "production_moved": "Not promoted: production moved", "not_auto": "Registered, not promoted",
            "refused": "Not promoted: the run failed"}


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def pointers_of(index: RegistryIndex, run_id: str) -> str:
    return ", ".join(name for name, target in (("production", index.production), ("latest", index.latest))
                     if target == run_id)


def registry_rows(index: RegistryIndex) -> list[dict[str, str]]:
    """One row per run, newest first: its pointers, status, primary metric at the end and at its best round."""
    entries = sorted(index.runs.values(), key=lambda e: (e.registered_at, e.run_id), reverse=True)
    rows: list[dict[str, str]] = []
    for entry in entries:
        name, _ = primary_metric(entry.task)
        rows.append({
            "run": entry.run_id,
            "pointers": pointers_of(index, entry.run_id),
            "registered": f"{entry.registered_at:%Y-%m-%d %H:%M}",
            "status": entry.status,
            "metric": name.removesuffix("_test"),
            "final": _shown(entry.final.metrics.get(name)),
            "best (round)": f"{_shown(entry.best.metrics.get(name))} ({entry.best.round})",
            "code": entry.code_version.removeprefix("git ")[:10],
        })
    return rows


def entry_lines(entry: RunEntry, index: RegistryIndex) -> list[tuple[str, str]]:
    """`fedgrove models show`: every field of a run's entry as (label, value)."""
    lines = [("run", entry.run_id), ("pointers", pointers_of(index, entry.run_id) or "–"),
             ("registered", entry.registered_at.isoformat()), ("status", entry.status)]
    if entry.failure:
        lines.append(("failure", entry.failure))
    lines += [("task", entry.task), ("spec hash", entry.spec_hash), ("code", entry.code_version),
              ("rounds run", str(entry.rounds_run))]
    lines += [(f"site {site}", f"{counts.records} records, {counts.test_records} test")
              for site, counts in sorted(entry.sites.items())]
    for label, result in (("final", entry.final), ("best", entry.best)):
        metrics = ", ".join(f"{name} {_shown(value)}" for name, value in sorted(result.metrics.items()))
        lines.append((f"{label} (round {result.round})", metrics))
    lines += [("final model", entry.final_model or "–"),
              ("best model", entry.best_model or "not kept (docs/registry.md says when)"),
              ("summary", entry.summary or "–")]
    return lines


def promotion_markdown(outcome: PromotionOutcome, index: RegistryIndex) -> str:
    """The markdown artifact a run leaves about its promotion."""
    rows = "\n".join(f"| {row['run']} | {row['pointers']} | {row['status']} | {row['metric']} {row['final']} |"
                     for row in registry_rows(index)[:10])
    return (f"## {HEADINGS[outcome.status]}: run {outcome.run_id}\n\n{outcome.message}\n\n"
            f"Production: run {outcome.production or '(none)'}\n\n"
            f"| run | pointers | status | final |\n|---|---|---|---|\n{rows}\n")
