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
import gzip
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Self

import pandas as pd
import sqlalchemy
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from fedgrove.s3 import S3Connection, S3Location, S3Problem

SITE_DATA_VARIABLE = "FEDGROVE_SITE_DATA"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SNIFF_BYTES = 64 * 1024  # CSV text has no NUL byte; a binary file almost always has one in its first 64 KiB
SPOOL_BYTES = 64 * 1024 * 1024  # an S3 object up to this size is buffered in memory, a larger one on disk
URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/database"
SHAPE_FIX = (
    f"fix: set {SITE_DATA_VARIABLE} to a .csv, .csv.gz, .parquet or .pq path, an s3:// URL, or JSON like "
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


def _error(public: str, detail: str | None = None) -> SourceError:
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


def _s3_location(url: str) -> S3Location:
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
        raise _error(  # never the value: it may be the URL, password included
            f'expected "url_env" to be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), got {got} '
            "(fix: put the database URL in a variable of the site's environment, e.g. SITE_DB, and give its name)"
        )

    @field_validator("query")
    @classmethod
    def _is_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise _error(f'expected a non-empty "query" in the site\'s SQL source, got an empty one ({SHAPE_FIX})')
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
            raise _error(  # not even in detail: another scheme's URL may carry a token
                f"{expected}, got a URL of another kind ({fix})", f"{expected}, got a {scheme[1]}:// URL ({fix})"
            )
        if is_s3(value):
            try:
                _s3_location(value)
            except ValueError as exc:
                raise _error(
                    "expected an S3 URL like s3://bucket/folder/table.csv, got one without a bucket, with a query "
                    f"or with empty path segments (fix: correct the URL in {SITE_DATA_VARIABLE})",
                    f"{exc} (fix: correct the URL in {SITE_DATA_VARIABLE})",
                ) from None
        if file_format_of(value) is None:
            expected = "expected the site's data file to end in .csv, .csv.gz, .parquet or .pq"
            fix = "fix: export the table as CSV or Parquet, or name the file after its format"
            raise _error(f"{expected}, got another file type ({fix})", f"{expected}, got {value!r} ({fix})")
        return value

    @model_validator(mode="after")
    def _has_exactly_one_source(self) -> Self:
        if (self.data is None) == (self.sql is None):
            got = "neither" if self.data is None else "both"
            expected = 'expected exactly one of "data" or "sql" in the site\'s data source'
            raise _error(f"{expected}, got {got} ({SHAPE_FIX})")
        return self

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """What a site puts in `FEDGROVE_SITE_DATA`: a path, an s3:// URL, or a JSON object."""
        text = text.strip()
        if not text:
            expected = f"expected {SITE_DATA_VARIABLE} to say where the site's data is"
            raise _error(f"{expected}, got an empty value ({SHAPE_FIX})")
        if not text.startswith("{"):
            return cls(data=text)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            expected = f"expected {SITE_DATA_VARIABLE} to be valid JSON as it starts with '{{'"
            where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            raise _error(
                f"{expected}, got a syntax error ({SHAPE_FIX})", f"{expected}, got {where} ({SHAPE_FIX})"
            ) from None
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors())
            expected = (
                f'expected {SITE_DATA_VARIABLE} to be a JSON object with "data" or "sql" (with "url_env" and "query")'
            )
            raise _error(
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
        return f"a {self.file_format.value} file" + (" on S3" if is_s3(self.data or "") else "")


def read_source(source: DataSource, *, base_dir: Path | None = None) -> pd.DataFrame:
    """The site's table. A relative path starts at `base_dir` (default: the current directory)."""
    if source.sql is not None:
        return _read_sql(source.sql)
    assert source.data is not None
    if is_s3(source.data):
        return _read_s3_file(source)
    return _read_local_file(source, (base_dir or Path.cwd()) / Path(source.data).expanduser())


def _read_local_file(source: DataSource, path: Path) -> pd.DataFrame:
    try:
        is_folder, exists = path.is_dir(), path.exists()
    except OSError as exc:  # e.g. a parent folder the site's user may not enter
        raise _unreadable(source, where=str(path), exc=exc) from None
    if is_folder:
        fix = f"fix: point {SITE_DATA_VARIABLE} at the file itself, not at the folder that holds it"
        raise _not_a_file(source, path, got="a folder", fix=fix)
    if not exists:
        fix = "fix: correct the path, or put the file there; a relative path starts at the site's working folder"
        raise _not_a_file(source, path, got="no file there", fix=fix)
    try:
        with open(path, "rb") as stream:
            return _parse_table(stream, source.file_format)
    except Exception as exc:  # whatever the reader raises on this file means it is not readable as its format
        raise _unreadable(source, where=str(path), exc=exc) from None


def _not_a_file(source: DataSource, path: Path, *, got: str, fix: str) -> SourceError:
    kind = source.public_description()
    return _error(
        f"expected {kind} at the path in {SITE_DATA_VARIABLE}, got {got} ({fix})",
        f"expected {kind} at {path}, got {got} ({fix})",
    )


def _read_s3_file(source: DataSource) -> pd.DataFrame:
    location = _s3_location(source.data or "")
    s3 = S3Connection(setting=SITE_DATA_VARIABLE)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buffer:
        try:
            body = s3.client.get_object(Bucket=location.bucket, Key=location.prefix)["Body"]
            shutil.copyfileobj(body, buffer, length=1024 * 1024)
        except Exception as exc:
            raise _s3_error(source, s3, location, exc) from None
        buffer.seek(0)
        try:
            return _parse_table(buffer, source.file_format)
        except Exception as exc:  # as for a local file
            raise _unreadable(source, where=location.uri(), exc=exc) from None


def _parse_table(stream: IO[bytes], fmt: FileFormat) -> pd.DataFrame:
    if fmt is FileFormat.PARQUET:
        return pd.read_parquet(stream, engine="pyarrow")
    text: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=stream) if fmt is FileFormat.GZIP_CSV else stream
    if b"\0" in text.read(SNIFF_BYTES):  # pandas may "parse" a binary file into garbage rather than fail
        raise ValueError(f"found a NUL byte in the first {SNIFF_BYTES // 1024} KiB: binary data, not CSV text")
    text.seek(0)
    return pd.read_csv(text, low_memory=False)


def _unreadable(source: DataSource, *, where: str, exc: Exception) -> SourceError:
    kind, fmt = source.public_description(), source.file_format
    fix = (
        f"fix: export the table again as {fmt.content}, and check that the copy is complete and readable by the "
        "site's user"
    )
    return _error(
        f"expected {kind} with valid content, got content that could not be read as {fmt.value} ({fix})",
        f"expected {kind} with valid content at {where}, got {type(exc).__name__}: {exc} ({fix})",
    )


_S3_PROBLEMS = {  # problem: (what was expected and what came, in general terms; the fix)
    S3Problem.NOT_FOUND: (
        "expected {kind} at the S3 URL in {var}, got no object there",
        "fix: upload the file, or correct the key in the URL",
    ),
    S3Problem.NO_BUCKET: (
        "expected {kind} at the S3 URL in {var}, got no such bucket on the S3 server",
        "fix: correct the bucket in the URL, or AWS_ENDPOINT_URL if it names the wrong server",
    ),
    S3Problem.CREDENTIALS: (
        "expected {kind} that the site's AWS credentials may read, got missing or refused credentials",
        "fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the bucket's policy",
    ),
    S3Problem.UNREACHABLE: (
        "expected an S3 server to answer for {kind}, got no answer or a server error",
        "fix: start the S3 server or retry later, or set AWS_ENDPOINT_URL to where it listens",
    ),
    S3Problem.OTHER: ("expected {kind}, got an S3 error", "fix: read the full error on the site's own terminal"),
}


def _s3_error(source: DataSource, s3: S3Connection, location: S3Location, exc: Exception) -> SourceError:
    """The detail is `fedgrove.s3`'s sentence (bucket, key, endpoint, access key id; never the secret), with the
    fix added where it has none."""
    failure = s3.explain(exc, bucket=location.bucket, key=location.prefix)
    problem = S3Problem.OTHER if failure is None else failure.problem
    what, fix = _S3_PROBLEMS[problem]
    detail = f"reading {location.uri()} failed: {exc}" if failure is None else failure.message
    if "(fix:" not in detail and problem is not S3Problem.OTHER:
        detail = f"{detail} ({fix})"
    return _error(f"{what.format(kind=source.public_description(), var=SITE_DATA_VARIABLE)} ({fix})", detail)


def _read_sql(sql: SqlQuery) -> pd.DataFrame:
    url = _database_url(sql.url_env)
    masked = url.render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(url)
    except (NoSuchModuleError, ImportError) as exc:
        expected = f"expected a database driver installed for the URL in {sql.url_env}"
        fix = (
            "fix: install the driver in the site's environment, "
            "e.g. pip install 'fedgrove[postgres]' for postgresql+psycopg"
        )
        raise _error(
            f"{expected}, got none for its dialect ({fix})",
            f"{expected}, got none for {url.drivername!r}: {exc} ({fix})",
        ) from None
    try:
        try:
            connection = _connect_read_only(engine, url)
        except (SQLAlchemyError, OSError) as exc:
            expected = f"expected a database to accept a connection at the URL in {sql.url_env}"
            fix = (
                f"fix: check the host, port, database, user and password in {sql.url_env}, "
                "and that the database server runs"
            )
            raise _error(
                f"{expected}, got a connection error ({fix})",
                f"{expected} ({masked}), got {_cause(exc, url)} ({fix})",
            ) from None
        with connection:  # closing rolls the transaction back
            return pd.read_sql_query(sqlalchemy.text(sql.query), connection)
    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:  # pandas wraps execution errors in its own
        fix = "fix: check the query's table and column names against the database, and the user's right to read them"
        raise _error(
            f"expected the SQL query in {SITE_DATA_VARIABLE} to run on the database in {sql.url_env}, "
            f"got a database error ({fix})",
            f"expected the query {sql.query!r} to run on {masked}, got {_cause(exc, url)} ({fix})",
        ) from None
    finally:
        engine.dispose()


def _database_url(variable: str) -> URL:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        raise _error(
            f"expected a database URL in the environment variable {variable}, got "
            f"{'it unset' if raw is None else 'an empty value'} "
            f"(fix: set {variable} in the site's environment to a SQLAlchemy URL, e.g. {URL_EXAMPLE})"
        )
    try:
        return make_url(raw.strip())
    except (ArgumentError, ValueError):  # their messages may quote the URL, password included: dropped
        raise _error(
            f"expected a SQLAlchemy URL like {URL_EXAMPLE} in {variable}, got a value that does not parse as one "
            f"(fix: correct {variable} in the site's environment; percent-encode special characters in the password)"
        ) from None


def _connect_read_only(engine: sqlalchemy.Engine, url: URL) -> Connection:
    """A connection whose transaction cannot write where the database enforces that (PostgreSQL, SQLite)."""
    backend, database = url.get_backend_name(), url.database or ""
    if backend == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        if not Path(database).is_file():  # connecting would create an empty database there
            raise FileNotFoundError(f"no SQLite database file at {Path(database).resolve()}")
    connection = engine.connect()
    try:
        if backend == "postgresql":
            connection.execution_options(postgresql_readonly=True)
        elif backend == "sqlite":
            connection.exec_driver_sql("PRAGMA query_only = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def _cause(exc: BaseException, url: URL) -> str:
    """The driver's own words (not SQLAlchemy's echo of the statement and its parameters), password masked."""
    root: BaseException = exc
    while not isinstance(root, DBAPIError) and root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, DBAPIError) and root.orig is not None:
        root = root.orig
    text = f"{type(root).__name__}: {str(root).strip()}"
    return text.replace(url.password, "***") if url.password else text
