"""How a site reads its own table (fedgrove.sources), against real things: files in tmp_path, the loopback S3
server (tests/s3_server.py), a SQLite file and a PostgreSQL 15 cluster (tests/postgres_server.py).

Every failure asserts its exact `public` message, that `detail` tells the site's operator what they need,
and that `public` holds no path, bucket, key, URL, password or query.

Its length (~640 lines) is one test per source kind and failure, each with its exact messages; the kinds
share the S3 and PostgreSQL fixtures and the no-leak check.
"""

from __future__ import annotations

import gzip
import json
import pickle
import socket
import sqlite3
import traceback
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy

from fedgrove.sources import DataSource, SourceError, SqlQuery, read_source
from tests.postgres_server import PostgresDatabase
from tests.s3_server import S3Server

SHAPE_FIX = (
    "fix: set FEDGROVE_SITE_DATA to a .csv, .csv.gz, .parquet or .pq path, an s3:// URL, a "
    "block:s3-bucket/<block>/<key> reference, or JSON like "
    '{"sql": {"url_env": "SITE_DB", "query": "select * from patients"}}'
)
PASSWORD = "pw-s3cr3t-7731"
TABLE = pd.DataFrame(
    {
        "age": [61, 47, 38],
        "weight": [70.5, None, 81.25],
        "ward": ["north", None, "east"],
        "smoker": [True, False, True],
    }
)


def assert_public_is_safe(error: SourceError, *secrets: str) -> None:
    """`public` is `str(error)` and names none of `secrets`, and a printed traceback (what Prefect logs for a failed
    task) shows this error alone: not the underlying one, whose message may quote a path, a URL or a query."""
    assert str(error) == error.public
    for secret in secrets:
        assert secret not in error.public, f"{secret!r} leaked into the public message"
    printed = "".join(traceback.format_exception(error))
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)
    assert printed.count("Traceback (most recent call last)") == 1
    assert printed.endswith(f"SourceError: {error.public}\n")


def sql_source(query: str, *, url_env: str = "HOSPITAL_C_DB") -> DataSource:
    return DataSource(sql=SqlQuery(url_env=url_env, query=query))


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- what a site writes in FEDGROVE_SITE_DATA --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "description"),
    [
        ("data/patients.csv", DataSource(data="data/patients.csv"), "a CSV file"),
        ("  /srv/site/Patients.CSV.GZ\n", DataSource(data="/srv/site/Patients.CSV.GZ"), "a gzip-compressed CSV file"),
        ("patients.pq", DataSource(data="patients.pq"), "a Parquet file"),
        ("s3://site-bucket/private/patients.parquet", DataSource(data="s3://site-bucket/private/patients.parquet"),
         "a Parquet file on S3"),
        ("S3://site-bucket/patients.csv", DataSource(data="S3://site-bucket/patients.csv"), "a CSV file on S3"),
        ('{"data": "patients.csv"}', DataSource(data="patients.csv"), "a CSV file"),
        ('{"sql": {"url_env": "HOSPITAL_C_DB", "query": "select * from patients"}}',
         sql_source("select * from patients"), "a SQL query (URL in $HOSPITAL_C_DB)"),
    ],
)  # fmt: skip
def test_parse_reads_a_path_an_s3_url_or_a_json_object_and_describes_only_its_kind(
    text: str, expected: DataSource, description: str
) -> None:
    source = DataSource.parse(text)
    assert source == expected
    assert source.public_description() == description


def test_a_data_source_is_frozen_and_refuses_unknown_fields() -> None:
    source = DataSource(data="patients.csv")
    with pytest.raises(ValueError, match="frozen"):
        source.data = "other.csv"
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        SqlQuery(url_env="SITE_DB", query="select 1", password="x")  # type: ignore[call-arg]


URL_ENV_FIX = "fix: put the database URL in a variable of the site's environment, e.g. SITE_DB, and give its name"
PARSE_FAILURES = {  # id: (what the site wrote, the exact public message, what the detail adds)
    "empty": (
        " \n",
        f"expected FEDGROVE_SITE_DATA to say where the site's data is, got an empty value ({SHAPE_FIX})",
        "got an empty value",
    ),
    "unsupported-suffix": (
        "/srv/hospital-b/patients.xlsx",
        "expected the site's data file to end in .csv, .csv.gz, .parquet or .pq, got another file type "
        "(fix: export the table as CSV or Parquet, or name the file after its format)",
        "got '/srv/hospital-b/patients.xlsx'",
    ),
    "other-url-scheme": (
        "https://files.example/hospital-b/patients.csv?token=abc",
        "expected the site's data to be a local path or an s3:// URL, got a URL of another kind "
        "(fix: copy the file to the site or to S3, or use a SQL source)",
        "got a https:// URL",
    ),
    "s3-url-without-bucket": (
        "s3:///hospital-b/patients.csv",
        "expected an S3 URL like s3://bucket/folder/table.csv, got one without a bucket, with a query or with "
        "empty path segments (fix: correct the URL in FEDGROVE_SITE_DATA)",
        "got 's3:///hospital-b/patients.csv'",
    ),
    "invalid-json": (
        '{"data": "hospital-b.csv",',
        f"expected FEDGROVE_SITE_DATA to be valid JSON as it starts with '{{', got a syntax error ({SHAPE_FIX})",
        "got Expecting property name enclosed in double quotes at line 1 column 27",
    ),
    "both": (
        '{"data": "hospital-b.csv", "sql": {"url_env": "HOSPITAL_B_DB", "query": "select 1"}}',
        f'expected exactly one of "data" or "sql" in the site\'s data source, got both ({SHAPE_FIX})',
        "got both",
    ),
    "neither": (
        "{}",
        f'expected exactly one of "data" or "sql" in the site\'s data source, got neither ({SHAPE_FIX})',
        "got neither",
    ),
    "wrong-shape": (
        '{"sql": {"url_env": "HOSPITAL_B_DB"}, "path": "hospital-b.csv"}',
        'expected FEDGROVE_SITE_DATA to be a JSON object with "data" or "sql" (with "url_env" and "query"), '
        f"got another shape ({SHAPE_FIX})",
        "got sql.query: Field required; path: Extra inputs are not permitted",
    ),
    "empty-query": (
        '{"sql": {"url_env": "HOSPITAL_B_DB", "query": "  "}}',
        f'expected a non-empty "query" in the site\'s SQL source, got an empty one ({SHAPE_FIX})',
        "got an empty one",
    ),
    "url-env-not-a-name": (
        '{"sql": {"url_env": "HOSPITAL B DB", "query": "select 1"}}',
        'expected "url_env" to be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), got something '
        f"else ({URL_ENV_FIX})",
        "got something else",
    ),
    "url-env-holds-the-url": (
        json.dumps({"sql": {"url_env": f"postgresql://hospital:{PASSWORD}@db.hospital-b/x", "query": "select 1"}}),
        'expected "url_env" to be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), got what looks '
        f"like a database URL itself ({URL_ENV_FIX})",
        "got what looks like a database URL itself",
    ),
}


@pytest.mark.parametrize(("text", "public", "in_detail"), PARSE_FAILURES.values(), ids=PARSE_FAILURES.keys())
def test_parse_refuses_what_is_not_a_data_source(text: str, public: str, in_detail: str) -> None:
    with pytest.raises(SourceError) as caught:
        DataSource.parse(text)

    error = caught.value
    assert error.public == public
    assert in_detail in error.detail
    assert_public_is_safe(error, "hospital-b", "hospital_b", "HOSPITAL_B", "token=abc", "select 1", ".xlsx")
    assert PASSWORD not in error.detail and "db.hospital-b" not in error.detail  # the URL never goes into detail


def test_a_source_error_keeps_both_messages_through_pickling() -> None:
    error = SourceError(public="expected a CSV file, got none", detail="expected a CSV file at /srv/x.csv, got none")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.public, copy.detail) == (error.public, error.public, error.detail)


# --- files on the site's disk -------------------------------------------------------------------------------


def test_reads_a_csv_file_with_pandas_type_inference(tmp_path: Path) -> None:
    (tmp_path / "patients.csv").write_text(
        "age,weight,ward,smoker\n61,70.5,north,True\n47,,,False\n38,81.25,east,True\n"
    )

    frame = read_source(DataSource(data=str(tmp_path / "patients.csv")))

    assert frame.dtypes.astype(str).to_dict() == {"age": "int64", "weight": "float64", "ward": "str", "smoker": "bool"}
    pd.testing.assert_frame_equal(frame, TABLE)


def test_a_column_of_numbers_that_turns_to_text_late_is_one_text_column(tmp_path: Path) -> None:
    rows = 300_000  # more than pandas' low-memory chunk, which would type the column per chunk and warn
    (tmp_path / "wards.csv").write_text("ward,age\n" + "7,61\n" * rows + "north,47\n")

    frame = read_source(DataSource(data="wards.csv"), base_dir=tmp_path)

    assert frame.dtypes.astype(str).to_dict() == {"ward": "str", "age": "int64"}
    assert (len(frame), frame["ward"].iloc[0], frame["ward"].iloc[-1]) == (rows + 1, "7", "north")


def test_reads_a_gzip_csv_named_in_capitals_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    with gzip.open(tmp_path / "site" / "PATIENTS.CSV.GZ", "wt") as out:
        TABLE.to_csv(out, index=False)

    frame = read_source(DataSource(data="site/PATIENTS.CSV.GZ"), base_dir=tmp_path)

    pd.testing.assert_frame_equal(frame, TABLE)


def test_reads_a_parquet_file_with_its_own_types(tmp_path: Path) -> None:
    table = TABLE.assign(
        visits=pd.array([3, None, 1], dtype="Int64"), admitted=pd.to_datetime(["2024-01-02", None, "2024-03-04"])
    )
    table.to_parquet(tmp_path / "patients.pq")

    frame = read_source(DataSource(data="patients.pq"), base_dir=tmp_path)

    assert frame.dtypes.astype(str).to_dict() == {
        "age": "int64", "weight": "float64", "ward": "str", "smoker": "bool", "visits": "Int64",
        "admitted": "datetime64[us]",
    }  # fmt: skip
    pd.testing.assert_frame_equal(frame, table)


def test_a_table_without_records_is_an_empty_frame_with_its_columns(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("age,weight,ward\n")
    TABLE.iloc[:0].to_parquet(tmp_path / "none.parquet")

    from_csv = read_source(DataSource(data="header.csv"), base_dir=tmp_path)
    from_parquet = read_source(DataSource(data="none.parquet"), base_dir=tmp_path)

    assert (len(from_csv), list(from_csv.columns)) == (0, ["age", "weight", "ward"])
    assert (len(from_parquet), list(from_parquet.columns)) == (0, list(TABLE.columns))
    assert from_parquet.dtypes.to_dict() == TABLE.dtypes.to_dict()


def test_a_missing_file_names_the_path_in_detail_only(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        read_source(DataSource(data="hospital-b/patients.csv"), base_dir=tmp_path)

    error = caught.value
    assert error.public == (
        "expected a CSV file at the path in FEDGROVE_SITE_DATA, got no file there (fix: correct the path, or put "
        "the file there; a relative path starts at the site's working folder)"
    )
    assert f"at {tmp_path / 'hospital-b' / 'patients.csv'}, got no file there" in error.detail
    assert_public_is_safe(error, "hospital-b", "patients", str(tmp_path))


def test_a_folder_is_not_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "hospital-b.parquet").mkdir()  # a partitioned Parquet data set is a folder

    with pytest.raises(SourceError) as caught:
        read_source(DataSource(data=str(tmp_path / "hospital-b.parquet")))

    error = caught.value
    assert error.public == (
        "expected a Parquet file at the path in FEDGROVE_SITE_DATA, got a folder (fix: point FEDGROVE_SITE_DATA at "
        "the file itself, not at the folder that holds it)"
    )
    assert f"at {tmp_path / 'hospital-b.parquet'}, got a folder" in error.detail
    assert_public_is_safe(error, "hospital-b", str(tmp_path))


UNPARSEABLE = {
    "a CSV file": "expected a CSV file with valid content, got content that could not be read as CSV (fix: export "
    "the table again as UTF-8 CSV text with a header row, and check that the copy is complete and readable by the "
    "site's user)",
    "a gzip-compressed CSV file": "expected a gzip-compressed CSV file with valid content, got content that could not "
    "be read as gzip-compressed CSV (fix: export the table again as gzip-compressed UTF-8 CSV text with a header row, "
    "and check that the copy is complete and readable by the site's user)",
    "a Parquet file": "expected a Parquet file with valid content, got content that could not be read as Parquet (fix: "
    "export the table again as a Parquet file, and check that the copy is complete and readable by the site's user)",
    "a Parquet file on S3": "expected a Parquet file on S3 with valid content, got content that could not be read as "
    "Parquet (fix: export the table again as a Parquet file, and check that the copy is complete and readable by the "
    "site's user)",
}


@pytest.mark.parametrize(
    ("name", "content", "underlying"),
    [
        pytest.param("hospital-b.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                     "ValueError: found a NUL byte in the first 64 KiB: binary data, not CSV text",
                     id="binary-named-csv"),
        pytest.param("hospital-b.csv", "ward\nnorth\n\u00e9ast\n".encode("latin-1"),
                     "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9", id="latin-1-csv"),
        pytest.param("hospital-b.csv", b"", "EmptyDataError: No columns to parse from file", id="empty-csv"),
        pytest.param("hospital-b.csv", b'age,ward\n61,"north\n', "ParserError: Error tokenizing data",
                     id="unterminated-quote-csv"),
        pytest.param("hospital-b.csv.gz", b"age,weight\n61,70.5\n", "BadGzipFile: Not a gzipped file",
                     id="plain-text-named-csv-gz"),
        pytest.param("hospital-b.parquet", "truncated", "ArrowInvalid: Could not open Parquet input source",
                     id="truncated-parquet"),
        pytest.param("hospital-b.pq", b"age,weight\n61,70.5\n", "ArrowInvalid: Could not open Parquet input source",
                     id="csv-named-pq"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_its_format_says_so(
    tmp_path: Path, name: str, content: bytes | str, underlying: str
) -> None:
    if content == "truncated":
        TABLE.to_parquet(tmp_path / "whole.parquet")
        content = (tmp_path / "whole.parquet").read_bytes()[:-100]
    assert isinstance(content, bytes)
    (tmp_path / name).write_bytes(content)
    source = DataSource(data=name)

    with pytest.raises(SourceError) as caught:
        read_source(source, base_dir=tmp_path)

    error = caught.value
    assert error.public == UNPARSEABLE[source.public_description()]
    assert f" at {tmp_path / name}, got " in error.detail and underlying in error.detail
    assert_public_is_safe(error, "hospital-b", str(tmp_path))


# --- files on S3 --------------------------------------------------------------------------------------------


def test_reads_csv_and_parquet_objects_from_s3(s3_server: S3Server, s3_env: str, tmp_path: Path) -> None:
    TABLE.to_parquet(tmp_path / "t.parquet")
    client = s3_server.client()
    client.put_object(Bucket=s3_env, Key="site/patients.csv", Body=TABLE.to_csv(index=False).encode())
    client.put_object(Bucket=s3_env, Key="site/patients.parquet", Body=(tmp_path / "t.parquet").read_bytes())

    from_csv = read_source(DataSource(data=f"s3://{s3_env}/site/patients.csv"))
    from_parquet = read_source(DataSource.parse(f"s3://{s3_env}/site/patients.parquet"))

    pd.testing.assert_frame_equal(from_csv, TABLE)
    pd.testing.assert_frame_equal(from_parquet, TABLE)


def _read_s3_failure(url: str) -> SourceError:
    with pytest.raises(SourceError) as caught:
        read_source(DataSource(data=url))
    return caught.value


def test_a_missing_s3_object_says_so(s3_env: str) -> None:
    error = _read_s3_failure(f"s3://{s3_env}/hospital-b/patients.csv")

    assert error.public == (
        "expected a CSV file on S3 at the S3 URL in FEDGROVE_SITE_DATA, got no object there (fix: upload the file, "
        "or correct the key in the URL)"
    )
    assert error.detail == (
        f"expected an object at s3://{s3_env}/hospital-b/patients.csv, got none "
        "(fix: upload the file, or correct the key in the URL)"
    )
    assert_public_is_safe(error, s3_env, "hospital-b")


def test_a_missing_bucket_says_so(s3_env: str) -> None:
    error = _read_s3_failure("s3://hospital-b-missing/patients.parquet")

    assert error.public == (
        "expected a Parquet file on S3 at the S3 URL in FEDGROVE_SITE_DATA, got no such bucket on the S3 server "
        "(fix: correct the bucket in the URL, or AWS_ENDPOINT_URL if it names the wrong server)"
    )
    assert "S3 bucket 'hospital-b-missing' does not exist at endpoint http://127.0.0.1:" in error.detail
    assert_public_is_safe(error, "hospital-b")


@pytest.mark.parametrize("credentials", ["refused", "missing"])
def test_refused_or_missing_s3_credentials_say_so(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch, credentials: str
) -> None:
    s3_server.client().put_object(Bucket=s3_env, Key="hospital-b.csv", Body=b"age\n61\n")
    if credentials == "refused":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    error = _read_s3_failure(f"s3://{s3_env}/hospital-b.csv")

    assert error.public == (
        "expected a CSV file on S3 that the site's AWS credentials may read, got missing or refused credentials "
        "(fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the bucket's policy)"
    )
    expected = {"refused": "refused access key id 'FEDGROVETESTKEY00001'", "missing": "Unable to locate credentials"}
    assert expected[credentials] in error.detail and "wrong-secret" not in error.detail
    assert_public_is_safe(error, s3_env, "hospital-b", "FEDGROVETESTKEY00001")


def test_an_s3_endpoint_that_does_not_answer_says_so(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    error = _read_s3_failure(f"s3://{s3_env}/hospital-b.csv")

    assert error.public == (
        "expected an S3 server to answer for a CSV file on S3, got no answer or a server error (fix: start the S3 "
        "server or retry later, or set AWS_ENDPOINT_URL to where it listens)"
    )
    assert f"expected an S3 server at endpoint http://127.0.0.1:{port}, got Could not connect" in error.detail
    assert_public_is_safe(error, s3_env, "hospital-b", str(port))


def test_an_s3_request_botocore_refuses_says_so(s3_env: str) -> None:
    error = _read_s3_failure("s3://hospital-b!/patients.csv")  # not a valid bucket name: refused before sending

    assert error.public == (
        "expected a CSV file on S3, got an S3 error (fix: read the full error on the site's own terminal)"
    )
    assert "S3 request for s3://hospital-b!/patients.csv failed: Parameter validation failed" in error.detail
    assert_public_is_safe(error, "hospital-b")


def test_an_s3_object_that_is_not_its_format_says_so(s3_server: S3Server, s3_env: str) -> None:
    s3_server.client().put_object(Bucket=s3_env, Key="hospital-b.parquet", Body=b"age\n61\n")

    error = _read_s3_failure(f"s3://{s3_env}/hospital-b.parquet")

    assert error.public == UNPARSEABLE["a Parquet file on S3"]
    assert f" at s3://{s3_env}/hospital-b.parquet, got ArrowInvalid" in error.detail
    assert_public_is_safe(error, s3_env, "hospital-b")


# --- SQL: SQLite and PostgreSQL ------------------------------------------------------------------------------

PATIENTS_SQL = (
    "create table patients (id integer primary key, ward text, weight double precision, visits integer, "
    "smoker boolean, admitted timestamp, fee numeric(10, 2))",
    "insert into patients values (1, 'north', 70.5, 3, true, '2024-01-02 03:04:05', 12.50), "
    "(2, NULL, NULL, NULL, NULL, NULL, NULL), (3, 'east %', 81.25, 1, false, '2024-03-04 00:00:00', 1.25)",
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "hospital-b.db") as connection:
        for statement in PATIENTS_SQL:
            connection.execute(statement.replace("double precision", "real"))
    connection.close()
    return f"sqlite:///{tmp_path / 'hospital-b.db'}"


@pytest.fixture
def postgres_url(postgres_database: PostgresDatabase) -> str:
    engine = sqlalchemy.create_engine(postgres_database.url)
    try:
        with engine.begin() as connection:
            for statement in PATIENTS_SQL:
                connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()
    return postgres_database.url.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth ignores the password


def test_reads_a_sqlite_table_with_its_types_and_nulls(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", sqlite_url)

    frame = read_source(sql_source("select id, ward, weight, visits from patients order by id"))

    assert frame.dtypes.astype(str).to_dict() == {
        "id": "int64", "ward": "str", "weight": "float64", "visits": "float64"
    }  # fmt: skip
    expected = pd.DataFrame(
        {"id": [1, 2, 3], "ward": ["north", None, "east %"], "weight": [70.5, None, 81.25], "visits": [3.0, None, 1.0]}
    )
    pd.testing.assert_frame_equal(frame, expected)


def test_reads_a_postgresql_table_with_its_types_and_nulls(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", postgres_url)

    query = "select * from patients where ward like '%' or ward is null order by id"  # "%" must reach psycopg as is
    frame = read_source(sql_source(query))

    assert frame.dtypes.astype(str).to_dict() == {
        "id": "int64", "ward": "str", "weight": "float64", "visits": "float64", "smoker": "object",
        "admitted": "datetime64[us]", "fee": "float64",
    }  # fmt: skip
    expected = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "ward": ["north", None, "east %"],
            "weight": [70.5, None, 81.25],
            "visits": [3.0, None, 1.0],
            "smoker": pd.Series([True, None, False], dtype=object),
            "admitted": pd.to_datetime(["2024-01-02 03:04:05", None, "2024-03-04 00:00:00"]).as_unit("us"),
            "fee": [12.5, None, 1.25],  # numeric arrives as Decimal; pandas' coerce_float makes it float64
        }
    )
    pd.testing.assert_frame_equal(frame, expected)


def test_a_query_without_records_is_an_empty_frame_with_its_columns(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", postgres_url)

    frame = read_source(sql_source("select id, ward from patients where id > 99"))

    assert (len(frame), list(frame.columns)) == (0, ["id", "ward"])


def _read_sql_failure(query: str = "select * from patients") -> SourceError:
    with pytest.raises(SourceError) as caught:
        read_source(sql_source(query))
    return caught.value


@pytest.mark.parametrize(("value", "got"), [(None, "it unset"), (" ", "an empty value")])
def test_an_unset_or_empty_url_variable_names_it_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, value: str | None, got: str
) -> None:
    if value is None:
        monkeypatch.delenv("HOSPITAL_C_DB", raising=False)
    else:
        monkeypatch.setenv("HOSPITAL_C_DB", value)

    error = _read_sql_failure()

    assert error.public == error.detail == (
        f"expected a database URL in the environment variable HOSPITAL_C_DB, got {got} (fix: set HOSPITAL_C_DB "
        "in the site's environment to a SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host:5432/database)"
    )
    assert_public_is_safe(error, "select * from patients")


@pytest.mark.parametrize(
    "url", [f"postgresql://hospital:{PASSWORD}@db.hospital-b:port/x", f"hospital {PASSWORD} db.hospital-b"]
)
def test_a_url_that_does_not_parse_is_never_echoed(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", url)

    error = _read_sql_failure()

    assert error.public == error.detail == (
        "expected a SQLAlchemy URL like postgresql+psycopg://user:password@host:5432/database in HOSPITAL_C_DB, got "
        "a value that does not parse as one (fix: correct HOSPITAL_C_DB in the site's environment; percent-encode "
        "special characters in the password)"
    )
    assert_public_is_safe(error, PASSWORD, "db.hospital-b", "select * from patients")


@pytest.mark.parametrize(
    ("dialect", "underlying"),
    [
        ("postgresql+pg8000", "No module named 'pg8000'"),
        ("hospitaldb", "Can't load plugin: sqlalchemy.dialects:hospitaldb"),
    ],
)
def test_a_url_whose_driver_is_not_installed_names_the_dialect_in_detail(
    monkeypatch: pytest.MonkeyPatch, dialect: str, underlying: str
) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", f"{dialect}://hospital:{PASSWORD}@db.hospital-b/x")

    error = _read_sql_failure()

    assert error.public == (
        "expected a database driver installed for the URL in HOSPITAL_C_DB, got none for its dialect (fix: install "
        "the driver in the site's environment, e.g. pip install 'fedgrove[postgres]' for postgresql+psycopg)"
    )
    assert f"got none for '{dialect}': {underlying}" in error.detail
    assert PASSWORD not in error.detail
    assert_public_is_safe(error, PASSWORD, "db.hospital-b", dialect, "select * from patients")


def test_a_database_that_does_not_answer_is_unreachable_with_the_url_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("HOSPITAL_C_DB", f"postgresql+psycopg://hospital:{PASSWORD}@127.0.0.1:{port}/hospital_b")

    error = _read_sql_failure()

    assert error.public == (
        "expected a database to accept a connection at the URL in HOSPITAL_C_DB, got a connection error (fix: check "
        "the host, port, database, user and password in HOSPITAL_C_DB, and that the database server runs)"
    )
    assert f"(postgresql+psycopg://hospital:***@127.0.0.1:{port}/hospital_b), got OperationalError: " in error.detail
    assert "Connection refused" in error.detail and PASSWORD not in error.detail
    assert_public_is_safe(error, PASSWORD, "hospital_b", str(port), "select * from patients")


def test_a_missing_sqlite_file_is_unreachable_and_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "hospital-b.db"
    monkeypatch.setenv("HOSPITAL_C_DB", f"sqlite:///{missing}")

    error = _read_sql_failure()

    assert error.public == (
        "expected a database to accept a connection at the URL in HOSPITAL_C_DB, got a connection error (fix: check "
        "the host, port, database, user and password in HOSPITAL_C_DB, and that the database server runs)"
    )
    assert f"got FileNotFoundError: no SQLite database file at {missing}" in error.detail
    assert not missing.exists()
    assert_public_is_safe(error, "hospital-b", str(tmp_path))


QUERY_FAILED = (
    "expected the SQL query in FEDGROVE_SITE_DATA to run on the database in HOSPITAL_C_DB, got a database error "
    "(fix: check the query's table and column names against the database, and the user's right to read them)"
)


@pytest.mark.parametrize(
    ("database", "underlying"),
    [("sqlite", "OperationalError: no such table: hospital_b_patients"),
     ("postgres", 'UndefinedTable: relation "hospital_b_patients" does not exist')],
)  # fmt: skip
def test_a_failing_query_says_so_with_the_database_error_in_detail(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, database: str, underlying: str
) -> None:
    url = request.getfixturevalue(f"{database}_url")
    monkeypatch.setenv("HOSPITAL_C_DB", url)
    masked, query = url.replace(PASSWORD, "***"), "select ward from hospital_b_patients"

    error = _read_sql_failure(query)

    assert error.public == QUERY_FAILED
    assert f"expected the query {query!r} to run on {masked}, got {underlying}" in error.detail
    assert PASSWORD not in error.detail
    assert_public_is_safe(error, "hospital_b", "hospital-b", "select ward", PASSWORD, url)


@pytest.mark.parametrize(
    ("database", "underlying"),
    [("sqlite", "OperationalError: attempt to write a readonly database"),
     ("postgres", "ReadOnlySqlTransaction: cannot execute DELETE in a read-only transaction")],
)  # fmt: skip
def test_a_query_that_writes_is_refused_and_changes_nothing(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, database: str, underlying: str
) -> None:
    monkeypatch.setenv("HOSPITAL_C_DB", request.getfixturevalue(f"{database}_url"))

    error = _read_sql_failure("delete from patients returning id")

    assert error.public == QUERY_FAILED
    assert underlying in error.detail
    assert len(read_source(sql_source("select id from patients"))) == 3
