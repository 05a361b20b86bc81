"""The aggregation server as a real process, for tests: isolated from the caller's FEDGROVE_ settings, with
the admin API at hand."""

from __future__ import annotations

from pathlib import Path

import httpx

from aggregator.process import AggregatorProcess as _AggregatorProcess
from aggregator.process import environment_without_fedgrove_settings
from fedgrove_common.child_process import free_loopback_port as free_port

__all__ = ["AggregatorProcess", "free_port"]


class AggregatorProcess(_AggregatorProcess):
    """`database_url`: FEDGROVE_DATABASE_URL of the process; None keeps the data folder's SQLite file."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, log: Path | None = None, database_url: str | None = None
    ) -> None:
        env = environment_without_fedgrove_settings()
        if database_url is not None:
            env["FEDGROVE_DATABASE_URL"] = database_url
        super().__init__(data_dir, port=port, log=log, env=env)
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'aggregator.db'}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def admin(self, method: str, path: str, **options: object) -> dict:
        response = httpx.request(method, f"{self.url}/admin/v1{path}", headers=self.admin_headers, timeout=30,
                                 **options)  # type: ignore[arg-type]
        response.raise_for_status()
        return response.json()
