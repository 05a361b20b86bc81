"""TEMPORARY stub: replaced by the site-sources branch (helper) on merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator


class SqlQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url_env: str
    query: str


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str | None = None
    sql: SqlQuery | None = None

    @model_validator(mode="after")
    def _one(self) -> "DataSource":
        if (self.data is None) == (self.sql is None):
            raise ValueError("expected exactly one of data or sql")
        return self

    @classmethod
    def parse(cls, text: str) -> "DataSource":
        text = text.strip()
        if text.startswith("{"):
            return cls.model_validate(json.loads(text))
        return cls(data=text)

    def public_description(self) -> str:
        return "a SQL query" if self.sql else "a file"


class SourceError(Exception):
    def __init__(self, public: str, detail: str) -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail


def read_source(source: DataSource, *, base_dir: Path | None = None) -> pd.DataFrame:
    if source.sql is not None:
        import sqlalchemy
        url = os.environ.get(source.sql.url_env)
        if not url:
            raise SourceError(f"${source.sql.url_env} is not set", "unset")
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                return pd.read_sql_query(sqlalchemy.text(source.sql.query), connection)
        finally:
            engine.dispose()
    path = Path(source.data)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise SourceError("the data file does not exist", f"{path} does not exist")
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    return pd.read_csv(path, low_memory=False)
