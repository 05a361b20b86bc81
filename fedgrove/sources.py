"""How a site reads its own table: a CSV or Parquet file (a local path or an s3:// URL), or a SQL query.

Why this module exists: a site's table never leaves the site, and neither does what would locate it. A site
says where its data is in its own environment (`FEDGROVE_SITE_DATA`); `DataSource.parse` reads that,
`read_source` turns it into a DataFrame, and whatever goes wrong becomes a `SourceError` with two messages:
`public`, safe for logs other organisations may see (the kind of source, what went wrong in general terms, the
fix; never a path, bucket, key, URL, query or record value), and `detail`, for the site's own terminal (the
path and the underlying error). The database URL, which may hold a password, is in neither: it lives in an
environment variable the source only names, and `detail` shows it with the password masked.

Reading never writes: files are only opened for reading, and a query runs in a transaction that is rolled back,
read-only where the database enforces it (PostgreSQL, SQLite). An empty table is not an error here: the caller
decides how many records are enough.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from pathlib import Path
from typing import Any, Self

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fedgrove_common.s3 import S3Location
from fedgrove_common.store_urls import BLOCK_PREFIX

SITE_DATA_VARIABLE = "FEDGROVE_SITE_DATA"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHAPE_FIX = (
    f"fix: set {SITE_DATA_VARIABLE} to a .csv, .csv.gz, .parquet or .pq path, an s3:// URL, a "
    "block:s3-bucket/<block>/<key> reference, or JSON like "
    '{"sql": {"url_env": "SITE_DB", "query": "select * from patients"}}'
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class SourceError(Exception):
    """The site's data could not be read. `str(exc)` is `public`; `detail` is for the site's own terminal.

    Raised `from None`: a printed traceback (Prefect logs one for a failed task) shows `public` only, not the
    underlying exception, whose message may quote a path, a query or a record. It stays in `__context__`.
    """

    def __init__(self, *, public: str, detail: str) -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # keep `detail` through pickling (Prefect moves exceptions around)
        return functools.partial(SourceError, public=self.public, detail=self.detail), ()


def source_error(public: str, detail: str | None = None) -> SourceError:
    return SourceError(public=public, detail=public if detail is None else detail)


class FileFormat(enum.Enum):
    CSV = "CSV"
    GZIP_CSV = "gzip-compressed CSV"
    PARQUET = "Parquet"

    @property
    def content(self) -> str:
        """What a file of this format must hold, in the words of an error message's fix."""
        if self is FileFormat.PARQUET:
            return "a Parquet file"
        return ("gzip-compressed " if self is FileFormat.GZIP_CSV else "") + "UTF-8 CSV text with a header row"


_SUFFIXES = {
    ".csv.gz": FileFormat.GZIP_CSV,
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
}


def file_format_of(location: str) -> FileFormat | None:
    """The format a path or s3:// URL names by its suffix (case-insensitive); None for any other suffix."""
    lowered = location.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if lowered.endswith(suffix)), None)


def is_s3(location: str) -> bool:
    return location[:5].lower() == "s3://"


_BLOCK_SOURCE = re.compile(r"block:s3-bucket/([A-Za-z0-9_-]+)/(\S+)")


def is_block_source(location: str) -> bool:
    """A file in the bucket (and folder) of a Prefect S3Bucket block: `block:s3-bucket/<block>/<key>`."""
    return location.startswith(BLOCK_PREFIX)


def block_source(location: str) -> tuple[str, str] | None:
    """`(block:s3-bucket/<block>, <key>)`, or None when `location` is not of that shape."""
    match = _BLOCK_SOURCE.fullmatch(location)
    if match is None or any(part in {"", ".", ".."} for part in match[2].split("/")):
        return None
    return f"{BLOCK_PREFIX}s3-bucket/{match[1]}", match[2]


def s3_location(url: str) -> S3Location:
    return S3Location.parse("s3://" + url[5:], setting=SITE_DATA_VARIABLE)  # S3Location wants "s3" in lower case


class SqlQuery(BaseModel):
    """A query against the database whose SQLAlchemy URL is in the environment variable `url_env`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url_env: str
    query: str

    @field_validator("url_env")
    @classmethod
    def _is_a_variable_name(cls, value: str) -> str:
        if ENV_NAME.fullmatch(value):
            return value
        got = "what looks like a database URL itself" if "://" in value else "something else"
        raise source_error(  # never the value: it may be the URL, password included
            f'expected "url_env" to be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), got {got} '
            "(fix: put the database URL in a variable of the site's environment, e.g. SITE_DB, and give its name)"
        )

    @field_validator("query")
    @classmethod
    def _is_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise source_error(f'expected a non-empty "query" in the site\'s SQL source, got an empty one ({SHAPE_FIX})')
        return value


class DataSource(BaseModel):
    """Where a site's table is: `data` (a path or s3:// URL) or `sql`, exactly one of them.

    Validation failures are `SourceError`s (pydantic lets them through unchanged); only a field of the wrong
    type is a pydantic ValidationError, which never shows the input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    data: str | None = None
    sql: SqlQuery | None = None

    @field_validator("data")
    @classmethod
    def _is_a_file_location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = _SCHEME.match(value)
        if scheme and not is_s3(value):
            expected = "expected the site's data to be a local path or an s3:// URL"
            fix = "fix: copy the file to the site or to S3, or use a SQL source"
            raise source_error(  # not even in detail: another scheme's URL may carry a token
                f"{expected}, got a URL of another kind ({fix})", f"{expected}, got a {scheme[1]}:// URL ({fix})"
            )
        if is_block_source(value) and block_source(value) is None:
            raise source_error(
                "expected a block reference like block:s3-bucket/<block>/<folder>/table.csv, got one of another "
                f"shape (fix: name an S3Bucket block and the file's key under its folder in {SITE_DATA_VARIABLE})",
                f"expected a block reference like block:s3-bucket/<block>/<folder>/table.csv, got {value!r} (fix: "
                f"name an S3Bucket block and the file's key under its folder in {SITE_DATA_VARIABLE})")
        if is_s3(value):
            try:
                s3_location(value)
            except ValueError as exc:
                raise source_error(
                    "expected an S3 URL like s3://bucket/folder/table.csv, got one without a bucket, with a query "
                    f"or with empty path segments (fix: correct the URL in {SITE_DATA_VARIABLE})",
                    f"{exc} (fix: correct the URL in {SITE_DATA_VARIABLE})",
                ) from None
        if file_format_of(value) is None:
            expected = "expected the site's data file to end in .csv, .csv.gz, .parquet or .pq"
            fix = "fix: export the table as CSV or Parquet, or name the file after its format"
            raise source_error(f"{expected}, got another file type ({fix})", f"{expected}, got {value!r} ({fix})")
        return value

    @model_validator(mode="after")
    def _has_exactly_one_source(self) -> Self:
        if (self.data is None) == (self.sql is None):
            got = "neither" if self.data is None else "both"
            expected = 'expected exactly one of "data" or "sql" in the site\'s data source'
            raise source_error(f"{expected}, got {got} ({SHAPE_FIX})")
        return self

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """What a site puts in `FEDGROVE_SITE_DATA`: a path, an s3:// URL, or a JSON object."""
        text = text.strip()
        if not text:
            expected = f"expected {SITE_DATA_VARIABLE} to say where the site's data is"
            raise source_error(f"{expected}, got an empty value ({SHAPE_FIX})")
        if not text.startswith("{"):
            return cls(data=text)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            expected = f"expected {SITE_DATA_VARIABLE} to be valid JSON as it starts with '{{'"
            where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            raise source_error(
                f"{expected}, got a syntax error ({SHAPE_FIX})", f"{expected}, got {where} ({SHAPE_FIX})"
            ) from None
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors())
            expected = (
                f'expected {SITE_DATA_VARIABLE} to be a JSON object with "data" or "sql" (with "url_env" and "query")'
            )
            raise source_error(
                f"{expected}, got another shape ({SHAPE_FIX})", f"{expected}, got {problems} ({SHAPE_FIX})"
            ) from None

    @property
    def file_format(self) -> FileFormat:
        fmt = file_format_of(self.data or "")
        assert fmt is not None, "only for a file source"  # `data` takes no other suffix
        return fmt

    def public_description(self) -> str:
        """The kind of source, safe to show anyone: "a CSV file", "a Parquet file on S3", "a SQL query (URL in $X)".

        Never a path, bucket, key, URL or query; the name of the URL's variable is the site's own choice of word.
        """
        if self.sql is not None:
            return f"a SQL query (URL in ${self.sql.url_env})"
        on_s3 = is_s3(self.data or "") or is_block_source(self.data or "")
        return f"a {self.file_format.value} file" + (" on S3" if on_s3 else "")


def read_source(source: DataSource, *, base_dir: Path | None = None, setting: str = SITE_DATA_VARIABLE) -> pd.DataFrame:
    """The site's table. A relative path starts at `base_dir` (default: the current directory). `setting` names
    where the site configured the source, for the messages (FEDGROVE_SITE_DATA, or the spec's sites.<name>)."""
    from fedgrove.source_files import read_local_file, read_s3_file
    from fedgrove.source_sql import read_sql

    if source.sql is not None:
        return read_sql(source.sql, setting=setting)
    assert source.data is not None
    if is_s3(source.data) or is_block_source(source.data):
        return read_s3_file(source, setting=setting)
    return read_local_file(source, (base_dir or Path.cwd()) / Path(source.data).expanduser(), setting=setting)
