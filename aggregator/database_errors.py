"""Why the server's database cannot be used, raised at start-up and shown as one line, never a traceback.

    DatabaseRefused        the server does not start on this database
    ├── DatabaseUnreachable    no connection: the server is down, the host or port is wrong, login refused
    └── SchemaNewerThanCode    a newer fedgrove has upgraded the schema past what this code knows

The driver's errors are translated here at the boundary (`raise DatabaseUnreachable(...) from exc`). Messages
name the host and port, or the database with its password hidden: a password is never formatted into one.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
_WHITESPACE = re.compile(r"\s+")
MIN_HIDDEN_CHARS = 4  # hiding a shorter password would garble the message more than it could reveal
_FIX = (
    "(fix: check that the database server is running there and that FEDGROVE_DATABASE_URL names its host, "
    "port, user and database)"
)


class DatabaseRefused(RuntimeError):
    """The server will not start on this database; the message says why and what to do."""


class DatabaseUnreachable(DatabaseRefused):
    def __init__(self, url: URL, reason: str) -> None:
        super().__init__(f"expected a database server answering at {where(url)} (FEDGROVE_DATABASE_URL), got: "
                         f"{_clean(reason, url)} {_FIX}")


class SchemaNewerThanCode(DatabaseRefused):
    def __init__(self, url: URL, *, found: str, newest: str, code_version: str) -> None:
        super().__init__(
            f"expected the database's schema at revision {newest} or older (the newest this fedgrove, "
            f"{code_version}, knows), got revision {found} in {url.render_as_string(hide_password=True)}: a newer "
            "fedgrove has upgraded it (fix: run that newer fedgrove, or restore the database from a backup taken "
            "before the upgrade)"
        )


def where(url: URL) -> str:
    """`host:port` of a database server (the driver's default port when the URL names none), or the file."""
    if url.host:
        port = url.port or DEFAULT_PORTS.get(url.get_backend_name())
        return f"{url.host}:{port}" if port else url.host
    return url.database or url.render_as_string(hide_password=True)


def driver_reason(message: str) -> str:
    """What the driver says went wrong, without its framing: libpq's `connection to server at "h", port p
    failed: Connection refused` (one line per address it tried) gives `Connection refused`."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if " failed: " in line:
            return line.rsplit(" failed: ", 1)[1]
    return lines[0] if lines else "no reason given"


def _clean(reason: str, url: URL) -> str:
    """One line; a password the driver quoted (none does today) hidden, as `render_as_string` hides it."""
    reason = _WHITESPACE.sub(" ", reason).strip()
    password = str(url.password or "")
    return reason.replace(password, "***") if len(password) >= MIN_HIDDEN_CHARS else reason
