"""The end of a round at a site, as one retryable task: download the aggregate, check it, measure it.

Why one task: every Prefect task run costs CPU in this process and in Prefect's server, and a round's five
steps ran as five task runs per site. Evaluating the aggregate is local, deterministic and only ever follows
its download, so it joins the reload: a retry downloads the same aggregate again and measures it again (the
AskAnna metrics of that epoch are sent again, with the same values).
"""

from __future__ import annotations

import numpy as np
from prefect import task

from fedgrove.metrics import RoundMetrics
from fedgrove.privacy import SecureRound
from fedgrove.site_training import SiteArrays
from fedgrove.spec import FederationSpec
from tasks.exchange import LeafSession, download_aggregate
from tasks.options import TRANSIENT
from tasks.training import evaluate_and_track


@task(name="reload-and-evaluate", **TRANSIENT)
def reload_and_evaluate(
    session: LeafSession, aggregation_id: str, *, template: list[np.ndarray], arrays: SiteArrays,
    spec: FederationSpec, round_number: int, leaf_name: str, secure: SecureRound | None = None,
    epsilon: float | None = None,
) -> tuple[list[np.ndarray], RoundMetrics]:
    """The aggregate this round loads, checked against `template` (the local fit), and its metrics on this
    site's records; the aggregate is marked loaded once it is measured."""
    parameters = download_aggregate(session, aggregation_id, template=template, secure=secure,
                                    round_number=round_number)
    metrics = evaluate_and_track(parameters, arrays, spec=spec, round_number=round_number, leaf_name=leaf_name,
                                 epsilon=epsilon)
    session.mark_loaded(aggregation_id)
    return parameters, metrics
