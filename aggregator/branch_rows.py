"""Each branch's row, read from the database once and kept: every upload and every run-status check needs it.

A branch's row changes only through `Registry.set_run_status`, in this server, which hands the new row here
after its commit. The server is the only one serving its database's branches (the open rounds are kept in
its memory as well), so the kept row is the database's. A branch that does not exist is not kept: it is
read again the next time.
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import sessionmaker

from aggregator.db import Branch


class BranchRows:
    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions
        self._rows: dict[str, Branch] = {}
        # A row read before a run-status commit must not be kept after the row `changed` hands in.
        self._lock = threading.Lock()

    def get(self, branch_id: str) -> Branch | None:
        """The branch's row (detached, not to be changed), or None when there is no such branch."""
        row = self._rows.get(branch_id)
        if row is not None:
            return row
        with self._lock:
            row = self._rows.get(branch_id)
            if row is None:
                with self._sessions() as session:
                    row = session.get(Branch, branch_id)
                if row is not None:
                    self._rows[branch_id] = row
        return row

    def kept(self, branch_id: str) -> Branch | None:
        """The branch's row if it has been read before; None otherwise, without touching the database."""
        return self._rows.get(branch_id)

    def changed(self, row: Branch) -> None:
        """Keep `row`, committed just now, in place of the one read before."""
        with self._lock:
            self._rows[row.id] = row
