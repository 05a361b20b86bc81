"""Tasks that train on a site's own records and measure the model: thin wrappers of `fedgrove.site_training`.

A retried task starts from the same inputs (they are never modified), so a retry repeats, never compounds.
"""

from __future__ import annotations

import numpy as np
from prefect import task

from fedgrove.metrics import RoundMetrics
from fedgrove.model import OptimizerState
from fedgrove.privacy import PrivacyPlan, privatise_update
from fedgrove.site_table import site_seed
from fedgrove.site_training import SiteArrays, fit, measure, site_arrays, train_alone
from fedgrove.encoding import Preprocessing
from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec
from fedgrove.tracking import track_round
from tasks.options import LOCAL


@task(name="prepare-inputs", **LOCAL)
def prepare_inputs(table: SiteTable, preprocessing: Preprocessing) -> SiteArrays:
    """The site's records turned into model inputs with the agreed preprocessing."""
    return site_arrays(table, preprocessing)


@task(name="fit-local", **LOCAL)
def fit_local(
    parameters: list[np.ndarray], arrays: SiteArrays, *, spec: FederationSpec, site: str, round_number: int,
    state: OptimizerState | None = None, privacy: PrivacyPlan | None = None,
) -> tuple[list[np.ndarray], OptimizerState | None]:
    """Train from `parameters` for the spec's local epochs on this site's training records; the optimizer's
    state (Adam's moments) comes in and goes out: it stays at the site. With site-level DP the update is
    clipped and noised here, with noise from the operating system's entropy."""
    local, state = fit(parameters, arrays, spec=spec, seed=site_seed(spec.train.seed, site), epoch=round_number,
                       state=state)
    if privacy is not None and privacy.site_noise_std is not None:
        local = privatise_update(parameters, local, plan=privacy, generator=np.random.default_rng())
    return local, state


def evaluate_and_track(
    parameters: list[np.ndarray], arrays: SiteArrays, *, spec: FederationSpec, round_number: int, leaf_name: str,
    epsilon: float | None = None,
) -> RoundMetrics:
    """Measure the aggregate on this site's records (and the privacy spent so far); record the four metrics in
    AskAnna. Part of the `reload-and-evaluate` task (`tasks.reload`)."""
    metrics = measure(parameters, arrays, spec=spec, epoch=round_number)
    if epsilon is not None:
        metrics = metrics.model_copy(update={"epsilon": epsilon})
    track_round(metrics.flat(), epoch=round_number, leaf_name=leaf_name, task=spec.task)
    return metrics


@task(name="train-alone", **LOCAL)
def train_alone_task(arrays: SiteArrays, *, spec: FederationSpec, site: str) -> list[RoundMetrics]:
    """The baseline: the same model on this site's records only, for as many epochs as the federation's rounds."""
    return train_alone(arrays, spec=spec, seed=site_seed(spec.train.seed, site))
