"""Tasks that read a site's own table and agree the preprocessing with the other sites through the server.

The site's records are read here, at the site, and never leave it: what crosses to the server is the
protocol of `fedgrove.federated_preprocessing` (a profile of counts, sums, frequent category names), one
`upload-sums` / `wait-for-aggregation` / `load-pooled-sums` per exchange, as "round 0" on the branch the
training rounds use next. What goes to Prefect's shared API (logs, states) names columns and counts only:
a failure that involves a path or a URL is told in full on the site's own terminal (`fedgrove.site`
logger, which Prefect does not ship), and in general terms everywhere else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.utilities.annotations import quote

from fedgrove.federated_preprocessing import AgreedPreprocessing, preprocessing_protocol
from fedgrove.site_table import SiteTable, table_for_spec
from fedgrove.sources import DataSource, SourceError, read_source
from fedgrove.spec import FederationSpec
from tasks.exchange import LeafSession, load_pooled_sums, upload_sums, wait_for_aggregation
from tasks.options import LOCAL

PREPROCESSING_ROUND = 0
MAX_COLUMNS_NAMED = 12
site_log = logging.getLogger("fedgrove.site")


@dataclass(frozen=True)
class SiteReading:
    """The site's prepared table, or why it cannot take part (a public message: no path, URL or value)."""

    table: SiteTable | None
    refusal: str | None = None


@task(name="read-site-data", **LOCAL)
def read_site_data(
    spec: FederationSpec, *, site: str, source: DataSource, base_dir: Path | None, setting: str
) -> SiteReading:
    """Read the site's own table and split it into its training and test records."""
    try:
        frame = read_source(source, base_dir=base_dir, setting=setting)
    except SourceError as exc:
        site_log.warning("site %s: %s", site, exc.detail)
        return SiteReading(table=None, refusal=exc.public)
    if len(frame) == 0:
        return SiteReading(table=None, refusal=f"its table ({source.public_description()}) is empty: 0 records (fix: "
                                               "point the site's data source at a table with records)")
    if spec.target not in frame.columns:
        names = [str(c) for c in frame.columns]
        shown = ", ".join(names[:MAX_COLUMNS_NAMED]) + (", ..." if len(names) > MAX_COLUMNS_NAMED else "")
        return SiteReading(table=None, refusal=f"its table has no target column {spec.target!r} (its columns: {shown}) "
                                               "(fix: correct target in the spec, or add the column at this site)")
    table = table_for_spec(frame, spec, site)
    get_run_logger().info("site %s: %d training and %d test records%s", site, len(table.train), len(table.test),
                          f", {table.unlabelled} without a label left out" if table.unlabelled else "")
    return SiteReading(table=table)


def agree_preprocessing(
    session: LeafSession, reading: SiteReading, *, spec: FederationSpec, site: str, timeout_s: float, run_id: str
) -> AgreedPreprocessing:
    """Run this site's side of federated preprocessing through the server; every site gets the same result,
    or raises the same `FederationRefused`."""
    protocol = preprocessing_protocol(spec=spec, site=site, table=reading.table, error=reading.refusal,
                                      run_id=run_id)
    step, fields = next(protocol)
    the_session = quote(session)  # Prefect need not walk it for futures: it holds none
    while True:
        upload_sums(the_session, quote(fields), step=step)
        aggregation_id = wait_for_aggregation(the_session, round_number=PREPROCESSING_ROUND, timeout_s=timeout_s)
        pooled = load_pooled_sums(the_session, aggregation_id)
        try:
            step, fields = protocol.send(pooled)
        except StopIteration as finished:
            agreed: AgreedPreprocessing = finished.value
            preprocessing = agreed.preprocessing
            get_run_logger().info(
                "site %s: preprocessing agreed in %d exchanges: %d encoded features%s", site, agreed.exchanges,
                len(preprocessing.encoded),
                f", selected {', '.join(preprocessing.input_names)}" if preprocessing.selected else "",
            )
            return agreed
