"""A run's registry entry, built from what the coordinator already has when a run ends: its summary, its
per-round table and the URIs of its published outputs. Plain functions; the only I/O is asking git for the
checkout's commit.

Why this module exists: the registry must say, for every run, which spec (a hash), which code (a commit or
the package version), which sites with how many records, how good the model was at the end and at its best
round (by pooled test loss), and where the model is. All of that is derived here, in one place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from fedgrove.registry import RoundMetricsEntry, RunEntry, SiteCounts
from fedgrove.spec import FederationSpec

CHECKOUT = Path(__file__).resolve().parent.parent
BEST_MODEL_FILE = "best-model.pt"  # with best-model.json beside it, as model.pt has model.json


def spec_hash(spec: FederationSpec) -> str:
    """SHA-256 of the shared spec (no data sources) as canonical JSON: equal specs, equal hashes."""
    document = spec.shared().model_dump(mode="json")
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def code_version(checkout: Path = CHECKOUT) -> str:
    """`git <commit>` of the checkout fedgrove runs from, else `fedgrove <installed version>`."""
    try:
        answer = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        answer = None
    if answer is not None and answer.returncode == 0 and answer.stdout.strip():
        return f"git {answer.stdout.strip()}"
    try:
        return f"fedgrove {importlib.metadata.version('fedgrove')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pooled_rounds(epochs: pd.DataFrame) -> pd.DataFrame:
    """The per-round pooled test metrics (`<name>_test` columns), one row per round, by round."""
    pooled = epochs[epochs["mode"] == "federated_pooled"].sort_values("epoch")
    return pooled[["epoch", *(c for c in pooled.columns if c.endswith("_test"))]]


def _metrics(row: pd.Series) -> dict[str, float | None]:
    return {name: (None if pd.isna(value) else float(value)) for name, value in row.items() if name != "epoch"}


@dataclass(frozen=True)
class BestRound:
    """The run's last round and its best one (lowest pooled test loss; the first of equals), with the best
    round's pooled test metrics."""

    final: int
    best: int
    metrics: dict[str, float | None]
    rounds: int

    @property
    def is_final(self) -> bool:
        return self.best == self.final


def best_round(epochs: pd.DataFrame) -> BestRound:
    rounds = pooled_rounds(epochs)
    final = rounds.iloc[-1]
    losses = rounds["loss_test"].astype(float)
    best = rounds.loc[losses.idxmin()] if losses.notna().any() else final
    return BestRound(final=int(final["epoch"]), best=int(best["epoch"]), metrics=_metrics(best), rounds=len(rounds))


def build_entry(*, spec: FederationSpec, summary: Mapping, epochs: pd.DataFrame, uris: Mapping[str, str],
                failures: Mapping[str, str], code: str, now: datetime | None = None) -> RunEntry:
    """The run's entry: failed if any site failed; the best round is the one with the lowest pooled test loss,
    and its model is `best-model.pt` when the run kept it (the last round's `model.pt` when it is the last)."""
    rounds = best_round(epochs)
    model = uris.get("model.pt")
    return RunEntry(
        run_id=summary["run_id"],
        registered_at=now or datetime.now(UTC),
        status="failed" if failures else "completed",
        failure="; ".join(f"site {site}: {why}" for site, why in failures.items()) or None,
        task=spec.task,
        spec_hash=spec_hash(spec),
        code_version=code,
        sites={site: SiteCounts(records=values["records"], test_records=values["test_records"])
               for site, values in summary["sites"].items()},
        rounds_run=rounds.rounds,
        final=RoundMetricsEntry(round=rounds.final, metrics=dict(summary["federated_pooled"])),
        best=RoundMetricsEntry(round=rounds.best, metrics=rounds.metrics),
        final_model=model,
        best_model=model if rounds.is_final else uris.get(BEST_MODEL_FILE),
        summary=uris.get("summary.json"),
    )
