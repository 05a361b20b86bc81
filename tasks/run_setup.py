"""The coordinator's bookkeeping steps: which spec runs, and what the sites reported back.

Sites mode never hands a site a path: the spec the coordinator settles on keeps only the site names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from prefect import task

from fedgrove.demo import DemoOptions, demo_spec, write_demo_sites
from fedgrove.encoding import Preprocessing
from fedgrove.registry_entry import BestRound
from fedgrove.results import SiteResult
from fedgrove.spec import FederationSpec, load_spec
from tasks.logs import run_logger
from tasks.options import LOCAL
from tasks.site_results import read_round_model, read_site_result


class SpecNotRunnable(ValueError):
    """The spec cannot run in the chosen mode."""


class PreprocessingMismatch(RuntimeError):
    """The sites report different preprocessing (they derive it from the same sums: a bug)."""


@task(name="settle-spec", **LOCAL)
def settle_spec(
    spec: FederationSpec | None, *, spec_file: Path | None, mode: Literal["local", "sites"], demo: DemoOptions,
    work: Path,
) -> FederationSpec:
    """The spec this run trains: the one given, else FEDGROVE_SPEC's file, else the built-in demo's."""
    logger = run_logger()
    if spec is None and spec_file is not None:
        spec = load_spec(spec_file)
        logger.info("running the spec in %s", spec_file)
    if spec is None:
        if mode == "sites":
            return demo_spec(None, demo)
        paths = write_demo_sites(work / "data", demo, min_records=10)
        logger.info("running the built-in demo: breast cancer over %d sites (%s split)", demo.sites, demo.split)
        return demo_spec(paths, demo)
    if not spec.sites:
        raise SpecNotRunnable("the spec lists no sites (fix: add a `sites:` mapping of site name to data source, or "
                              "a list of site names for sites mode)")
    if mode == "sites":
        if any(source is not None for source in spec.sites.values()):
            logger.info("sites mode: the spec's data sources stay here; each site reads its own")
        return spec.shared()
    without = [name for name, source in spec.sites.items() if source is None]
    if without:
        raise SpecNotRunnable(f"sites {', '.join(without)} have no data source in the spec; on one machine every site "
                              "needs one (fix: give each `data: <file>` or `sql: {url_env, query}`, or run in sites "
                              "mode)")
    return spec


def collect_site_results(
    *, run_id: str, artifacts_url: str, sites: list[str]
) -> tuple[list[SiteResult], list[np.ndarray]]:
    """Every finished site's result, and the final parameters (identical at every site; the first site's)."""
    results, parameters = [], None
    for site in sites:
        result, site_parameters = read_site_result(run_id=run_id, artifacts_url=artifacts_url, site=site)
        results.append(result)
        parameters = parameters if parameters is not None else site_parameters
    assert parameters is not None
    return results, parameters


def agreed_preprocessing(results: list[SiteResult]) -> Preprocessing:
    """The one preprocessing every site derived."""
    distinct = {r.preprocessing.model_dump_json() for r in results}
    if len(distinct) != 1:
        raise PreprocessingMismatch(
            f"expected every site to derive the same preprocessing, got {len(distinct)} different ones: "
            + "; ".join(f"{r.site}: {', '.join(r.preprocessing.input_names)}" for r in results)
        )
    return results[0].preprocessing


def best_round_parameters(*, run_id: str, artifacts_url: str, best: BestRound, keeper: str | None
                          ) -> list[np.ndarray] | None:
    """The best round's aggregate when it is not the last, from the site that kept every round's; None when that
    site did not finish or kept none, or its archive cannot be read (logged: the run's outputs do not wait on it)."""
    if best.is_final or keeper is None:
        return None
    try:
        parameters = read_round_model(run_id=run_id, artifacts_url=artifacts_url, site=keeper,
                                      round_number=best.best)
    except Exception as exc:  # a store error or a damaged archive: the run's own outputs come first
        run_logger().warning("the best round's model (round %d) is not kept: site %s's round models cannot be "
                             "read (%s: %s)", best.best, keeper, type(exc).__name__, exc)
        return None
    if parameters is None:
        run_logger().warning("the best round's model (round %d) is not kept: site %s published no model of it",
                             best.best, keeper)
    return parameters
