"""A run's summary and per-epoch table, built from the sites' results: plain functions, no I/O.

Why this module exists: the coordinator flow only puts steps in order; what a finished run says about
itself (per site federated vs alone, the federation pooled, the centralised model where one process held
all the data) is computed here, once, for the flow, the CLI's final table and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fedgrove.metrics import HEADLINE, METRICS, RoundMetrics
from fedgrove.results import SiteResult, final_test_metrics, pooled_round
from fedgrove.spec import FederationSpec

MODES = ("federated", "federated_pooled", "alone", "centralised")


def epoch_columns(task: str) -> list[str]:
    names = METRICS[task]
    return ["mode", "site", "epoch", *names, *(f"{name}_test" for name in names)]


def epochs_frame(results: Sequence[SiteResult], centralised: Sequence[RoundMetrics] | None) -> pd.DataFrame:
    """One row per (mode, site, epoch): every site federated and alone, the pooled federation, centralised."""
    rows = []
    for result in results:
        rows += [{"mode": "federated", "site": result.site, "epoch": m.epoch, **m.flat()} for m in result.federated]
    if results:
        for index in range(len(results[0].federated)):
            pooled = pooled_round(results, index)
            rows.append({"mode": "federated_pooled", "site": "all", "epoch": pooled.epoch, **pooled.flat()})
    for result in results:
        rows += [{"mode": "alone", "site": result.site, "epoch": m.epoch, **m.flat()} for m in result.alone]
    for m in centralised or []:
        rows.append({"mode": "centralised", "site": "all", "epoch": m.epoch, **m.flat()})
    task = results[0].preprocessing.task if results else "binary"
    columns = epoch_columns(task) + (["epsilon"] if any("epsilon" in row for row in rows) else [])
    return pd.DataFrame(rows, columns=columns)


def identical_models(results: Sequence[SiteResult]) -> bool:
    """Whether every site held bit-identical parameters after every round."""
    rounds = {len(r.parameter_digests) for r in results}
    if len(rounds) != 1:
        return False
    return all(len({r.parameter_digests[i] for r in results}) == 1 for i in range(rounds.pop()))


def build_summary(
    *,
    run_id: str,
    spec: FederationSpec,
    mode: str,
    results: Sequence[SiteResult],
    centralised: Sequence[RoundMetrics] | None,
    failures: Mapping[str, str],
) -> dict:
    """summary.json: the run, per site federated vs alone, the pooled federation, centralised (or None)."""
    preprocessing = results[0].preprocessing
    final = len(results[0].federated) - 1
    return {
        "run_id": run_id,
        "mode": mode,
        "task": spec.task,
        "metrics": list(METRICS[spec.task]),
        "headline": list(HEADLINE[spec.task]),
        "target": spec.target,
        "labels": preprocessing.labels,
        "rounds": spec.train.rounds,
        "features": preprocessing.input_names,
        "p_values": preprocessing.p_values,
        "dropped_constant": preprocessing.dropped_constant,
        "sites": {
            r.site: {
                "records": r.records,
                "test_records": r.test_records,
                "unlabelled": r.unlabelled,
                "federated": final_test_metrics(r.federated[-1]),
                "alone": final_test_metrics(r.alone[-1]) if r.alone else None,
            }
            for r in results
        },
        "federated_pooled": final_test_metrics(pooled_round(results, final)),
        "centralised": final_test_metrics(centralised[-1]) if centralised else None,
        "identical_models": identical_models(results),
        "failed_sites": dict(failures),
        "privacy": _privacy(spec, results),
        "seconds_per_round": _median_round_seconds(results),
        "preprocessing_s": max((r.preprocessing_seconds for r in results if r.preprocessing_seconds is not None),
                               default=None),
        "spec": spec.shared().model_dump(mode="json"),
    }


def _privacy(spec: FederationSpec, results: Sequence[SiteResult]) -> dict:
    """What was protected, the ε spent (the largest of any site's, at the spec's delta) and why the run stopped
    early, if it did."""
    dp = spec.privacy.dp
    spent = [m.epsilon for r in results for m in r.federated[-1:] if m.epsilon is not None]
    return {
        "secure_aggregation": spec.privacy.secure_aggregation,
        "dp": dp.model_dump(mode="json") if dp is not None else None,
        "epsilon": max(spent) if spent else None,
        "rounds_run": len(results[0].federated),
        "message": next((r.privacy_message for r in results if r.privacy_message), None),
    }


def _median_round_seconds(results: Sequence[SiteResult]) -> float | None:
    rounds = min((len(r.round_seconds) for r in results), default=0)
    if rounds == 0:
        return None
    return float(np.median([max(r.round_seconds[i] for r in results) for i in range(rounds)]))
