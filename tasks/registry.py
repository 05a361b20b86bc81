"""The task that adds a finished run to the model registry and applies the safe-promotion rule.

One call at the end of the coordinator flow: register the run (its entry, `latest`), then promote it to
`production` if `fedgrove.promotion`'s rule allows, with a compare-and-swap (`fedgrove.registry`). Whatever
happens, one log line and a markdown artifact say why, and the registry is published as a table artifact
under one key, so the Prefect UI keeps its history.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fedgrove.registry import PromotionOutcome, Registry
from fedgrove.registry_entry import build_entry, code_version
from fedgrove.registry_report import promotion_markdown, registry_rows
from fedgrove.registry_store import index_store_from_url
from fedgrove.spec import FederationSpec
from tasks.logs import run_logger
from tasks.options import LOCAL
from tasks.registry_events import announce_not_promoted

REGISTRY_KEY = "model-registry"
PROMOTION_KEY = "model-promotion"


@task(name="register-and-promote", **LOCAL)
def register_and_promote(*, spec: FederationSpec, summary: Mapping, epochs: pd.DataFrame, uris: Mapping[str, str],
                         failures: Mapping[str, str], artifacts_url: str | None) -> PromotionOutcome:
    """Register the run in `<artifacts>/registry/` and promote it if it is no worse than production."""
    logger = run_logger()
    registry = Registry(index_store_from_url(artifacts_url))
    entry = build_entry(spec=spec, summary=summary, epochs=epochs, uris=uris, failures=failures,
                        code=code_version())
    registry.register(entry)
    outcome = registry.promote_if_better(entry.run_id, spec.promotion)
    index = registry.index()
    if outcome.promoted:
        logger.info("model registry: %s", outcome.message)
    else:
        logger.warning("model registry: %s", outcome.message)
        if spec.promotion.auto:
            announce_not_promoted(entry.run_id, outcome.message)  # for the automation that alerts on it
    create_markdown_artifact(markdown=promotion_markdown(outcome, index), key=PROMOTION_KEY,
                             description=f"Promotion of run {entry.run_id}")
    create_table_artifact(table=registry_rows(index), key=REGISTRY_KEY,
                          description=f"Model registry at {registry.location}")
    return outcome
