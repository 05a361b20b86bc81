"""What only a site sets: where its records are, its scratch folder, its credentials and its artifact store.

Why this module exists: a site's data source and credentials belong to the site. In sites mode they come
from the site's own worker (`FEDGROVE_SITE_DATA`, `FEDGROVE_WORK_DIR`, `FEDGROVE_ARTIFACTS`, the leaf's
credentials) or from its own deployment's parameters in `prefect.yaml`; the coordinator sends the spec
only. On one machine (`fedgrove train`, the demo) the coordinator process is every site at once, and hands
each in-process leaf its `SiteConfig` directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fedgrove.settings import PipelineSettings
from fedgrove.sources import SITE_DATA_VARIABLE, DataSource, SourceError
from fedgrove_common.store_urls import is_block_url


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataSource
    source_setting: str = SITE_DATA_VARIABLE  # where the site configured `data`, for messages
    base_dir: Path | None = None  # relative data paths resolve here
    work_dir: Path | None = None  # scratch: downloads, staged results
    env_file: Path | None = None  # the leaf's credentials; default: the environment
    artifacts: str | None = None  # where the site's result goes; default: FEDGROVE_ARTIFACTS, else ./runs


class SiteNotConfigured(RuntimeError):
    """The site has no data source of its own."""


def site_config_from_environment(site: str, settings: PipelineSettings | None = None) -> SiteConfig:
    """The site's configuration from its worker's environment (`FEDGROVE_SITE_DATA` and friends)."""
    settings = settings or PipelineSettings()
    if not settings.site_data:
        raise SiteNotConfigured(
            f"site {site} has no data source: FEDGROVE_SITE_DATA is not set in this worker's environment (fix: "
            "start the site's worker with FEDGROVE_SITE_DATA=<its table>, or give its own deployment a `site` "
            "parameter in prefect.yaml)"
        )
    try:
        source = DataSource.parse(settings.site_data)
    except SourceError as exc:
        raise SiteNotConfigured(f"site {site}: {exc.public}") from None
    return SiteConfig(data=source, work_dir=settings.work_dir, artifacts=shared_artifacts_url(settings.artifacts))


def shared_artifacts_url(url: str | None) -> str:
    """The artifact store as other processes can reach it: a local folder made absolute."""
    if url and ("://" in url or is_block_url(url)):
        return url
    return str(Path(url or "runs").resolve())
