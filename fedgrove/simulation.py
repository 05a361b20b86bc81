"""The federation of a spec in one process: no server, no Prefect, no client. The reference the pipeline
must equal, and the floor the benchmarks measure against.

Why this module exists: it runs exactly what the leaves run (the same preprocessing protocol, driven in
lockstep with the server replaced by a sum; the same local fit and measurement functions; FedAvg weighted
by training records), so a difference between it and a real run is a bug in the plumbing. It also trains
the baselines: each site alone, and the centralised model on every site's training records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedgrove.federated_preprocessing import preprocessing_protocol
from fedgrove.lockstep import run_in_lockstep
from fedgrove.metrics import RoundMetrics
from fedgrove.model import OptimizerState
from fedgrove.privacy import PrivacyPlan, privatise_update
from fedgrove.results import SiteResult, parameter_digest
from fedgrove.site_table import SiteTable, site_seed
from fedgrove.site_training import SiteArrays, fit, initial_parameters, measure, site_arrays, train_alone
from fedgrove.spec import FederationSpec
from fedgrove_common.fedavg import weighted_mean


def weighted_average(results: Sequence[tuple[Sequence[np.ndarray], float]]) -> list[np.ndarray]:
    """FedAvg: per layer, the mean of the sites' arrays weighted by their weighting (float64 sums, float32 out),
    by `fedgrove_common.fedavg`, the server's own arithmetic."""
    if not results:
        raise ValueError("expected at least one (parameters, weighting) pair, got none")
    total = float(sum(weight for _, weight in results))
    if total <= 0 or any(weight < 0 for _, weight in results):
        raise ValueError(f"expected non-negative weightings with a positive sum, got {[w for _, w in results]}")
    layers = len(results[0][0])
    if any(len(params) != layers for params, _ in results):
        raise ValueError(f"expected every site to send {layers} arrays, got {[len(p) for p, _ in results]}")
    as_float64 = [([np.asarray(p, dtype=np.float64) for p in params], float(weight)) for params, weight in results]
    return [layer.astype(np.float32, copy=False) for layer in weighted_mean(as_float64)]


@dataclass(frozen=True)
class Simulation:
    results: list[SiteResult]
    centralised: list[RoundMetrics] | None
    parameters: list[np.ndarray]


def _aggregate(updates: Sequence[tuple[list[np.ndarray], float]], plans: Mapping[str, PrivacyPlan],
               roster: Sequence[str], round_number: int) -> list[np.ndarray]:
    """FedAvg of the sites' updates; with secure aggregation, of their masked uploads, as the server sees them
    (each with weighting 1), unmasked as every site unmasks it."""
    secure = [plans[site].secure for site in roster]
    if secure[0] is None:
        return weighted_average(updates)
    masked = [(plan.mask(local, weight, round_number), 1.0) for plan, (local, weight) in zip(secure, updates,
                                                                                            strict=True)]
    server_mean = weighted_mean(masked)
    return secure[0].unmask(server_mean, updates[0][0], round_number)


def pooled_arrays(arrays: Sequence[SiteArrays]) -> SiteArrays:
    """Every site's training records together, and every site's test records together."""
    first = arrays[0]
    return SiteArrays(
        X=np.concatenate([a.X for a in arrays]), y=np.concatenate([a.y for a in arrays]),
        X_test=np.concatenate([a.X_test for a in arrays]), y_test=np.concatenate([a.y_test for a in arrays]),
        preprocessing=first.preprocessing, imputed=first.imputed,
    )


def simulate(
    spec: FederationSpec, tables: Mapping[str, SiteTable], *, baselines: bool = True, centralised: bool = True,
    run_id: str = "simulation", noise: np.random.Generator | None = None,
) -> Simulation:
    """Run the spec over the sites' tables (site name -> its table, as the leaves prepare it). With privacy in
    the spec, uploads are masked and unmasked as the leaves do, and site-level DP noise is drawn from `noise`
    (default: the operating system's entropy)."""
    roster = spec.roster()
    if sorted(tables) != roster:
        raise ValueError(f"expected tables for the spec's sites {roster}, got {sorted(tables)}")
    agreed, _steps = run_in_lockstep(
        {site: preprocessing_protocol(spec=spec, site=site, table=tables[site], run_id=run_id) for site in roster}
    )
    preprocessing = agreed[roster[0]].preprocessing
    plans = {site: agreed[site].privacy for site in roster}
    generator = noise if noise is not None else np.random.default_rng()
    arrays = {site: site_arrays(tables[site], preprocessing) for site in roster}
    parameters = initial_parameters(spec, len(preprocessing.input_names), arrays[roster[0]].n_outputs)
    history: dict[str, list[RoundMetrics]] = {site: [] for site in roster}
    states: dict[str, OptimizerState | None] = {site: None for site in roster}
    digests: list[str] = []
    for epoch in range(1, plans[roster[0]].rounds + 1):
        updates = []
        for site in roster:
            local, states[site] = fit(parameters, arrays[site], spec=spec, seed=site_seed(spec.train.seed, site),
                                      epoch=epoch, state=states[site])
            local = privatise_update(parameters, local, plan=plans[site], generator=generator)
            updates.append((local, float(arrays[site].records)))
        parameters = _aggregate(updates, plans, roster, epoch)
        digests.append(parameter_digest(parameters))
        for site in roster:
            metrics = measure(parameters, arrays[site], spec=spec, epoch=epoch)
            if plans[site].epsilons:
                metrics = metrics.model_copy(update={"epsilon": plans[site].epsilons[epoch - 1]})
            history[site].append(metrics)
    results = [
        SiteResult(
            site=site,
            records=arrays[site].records,
            test_records=len(arrays[site].y_test),
            unlabelled=tables[site].unlabelled,
            preprocessing=preprocessing,
            federated=history[site],
            alone=train_alone(arrays[site], spec=spec, seed=site_seed(spec.train.seed, site)) if baselines else [],
            parameter_digests=digests,
            privacy_message=plans[site].stop_message,
            imputed=arrays[site].imputed.imputed,
        )
        for site in roster
    ]
    central = None
    if centralised:
        central = train_alone(pooled_arrays([arrays[site] for site in roster]), spec=spec, seed=spec.train.seed)
    return Simulation(results=results, centralised=central, parameters=parameters)
