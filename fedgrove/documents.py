"""Sharing small JSON documents between sites through a server that can only add numbers.

Why this module exists: before they train, sites must tell each other things that are not sums: which
columns they hold, which labels and which frequent categories occur. A BranchKey server combines
federated-analytics fields element-wise and knows nothing of text. So each site writes its document,
compressed, into its own row of an N x `ROW_BYTES` byte matrix (N = number of sites, row = the site's rank
in the sorted roster) and zeros everywhere else; the server's sum is every site's document at once.

Every field name ends in `_sum`, a suffix every BranchKey server sums whatever the branch's configuration.
A `slots_sum` field (one 1 in the site's own slot) shows whether each site reported exactly once: two leaves
claiming one site, or a site the aggregation completed without, is caught instead of read as garbage.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ROW_BYTES = 65536
ROWS_FIELD = "document_rows_sum"
SLOTS_FIELD = "document_slots_sum"
_LENGTH_BYTES = 4


class DocumentExchangeError(ValueError):
    """The combined documents cannot be read: a site reported twice, not at all, or under another name."""


def document_fields(document: Mapping[str, Any], *, roster: Sequence[str], site: str) -> dict[str, np.ndarray]:
    """This site's contribution: its document in its own row, and a 1 in its own slot."""
    if site not in roster:
        raise DocumentExchangeError(f"expected site {site!r} to be one of the federation's sites {list(roster)} "
                                    "(fix: name the site as the spec's sites do)")
    rank = list(roster).index(site)
    payload = zlib.compress(json.dumps({"site": site, "document": document}, sort_keys=True).encode(), 9)
    if len(payload) + _LENGTH_BYTES > ROW_BYTES:
        raise DocumentExchangeError(
            f"expected site {site}'s description to fit {ROW_BYTES} bytes compressed, got {len(payload)} (fix: "
            "exclude columns of free text or identifiers, whose many distinct values make it large)"
        )
    rows = np.zeros((len(roster), ROW_BYTES), dtype=np.uint8)
    row = len(payload).to_bytes(_LENGTH_BYTES, "little") + payload
    rows[rank, : len(row)] = np.frombuffer(row, dtype=np.uint8)
    slots = np.zeros(len(roster), dtype=np.int64)
    slots[rank] = 1
    return {ROWS_FIELD: rows, SLOTS_FIELD: slots}


def read_documents(combined: Mapping[str, np.ndarray], *, roster: Sequence[str]) -> dict[str, Any]:
    """Every site's document, by site name, from the combined fields."""
    rows, slots = combined.get(ROWS_FIELD), combined.get(SLOTS_FIELD)
    if rows is None or slots is None:
        raise DocumentExchangeError(f"expected fields {ROWS_FIELD} and {SLOTS_FIELD} in the combined archive, got "
                                    f"{sorted(combined)} (fix: every site must run the same fedgrove version)")
    if rows.shape != (len(roster), ROW_BYTES) or slots.shape != (len(roster),):
        raise DocumentExchangeError(f"expected documents for {len(roster)} sites, got rows {rows.shape} and slots "
                                    f"{slots.shape} (fix: give every site the same list of sites)")
    twice = [roster[i] for i in np.flatnonzero(slots > 1)]
    absent = [roster[i] for i in np.flatnonzero(slots == 0)]
    if twice or absent:
        parts = []
        if twice:
            parts.append(f"more than one leaf reported as {', '.join(twice)}")
        if absent:
            parts.append(f"no leaf reported as {', '.join(absent)}")
        raise DocumentExchangeError(
            "; ".join(parts) + " (fix: run exactly one leaf per site, and make the branch's aggregation target "
            f"equal the number of sites, {len(roster)})"
        )
    documents: dict[str, Any] = {}
    for rank, expected in enumerate(roster):
        row = rows[rank].astype(np.uint8).tobytes()
        length = int.from_bytes(row[:_LENGTH_BYTES], "little")
        try:
            decoded = json.loads(zlib.decompress(row[_LENGTH_BYTES: _LENGTH_BYTES + length]))
        except (zlib.error, ValueError):
            raise DocumentExchangeError(f"the document in site {expected}'s row cannot be read (fix: run exactly one "
                                        "leaf per site, all of the same fedgrove version)") from None
        if decoded.get("site") != expected:
            raise DocumentExchangeError(f"expected site {expected}'s row to hold its own document, got one signed "
                                        f"{decoded.get('site')!r} (fix: give every site the same list of sites)")
        documents[expected] = decoded["document"]
    return documents
