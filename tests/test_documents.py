"""Documents shared through a sum: each site's own row, checked for sites that report twice or not at all."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrove.documents import ROW_BYTES, DocumentExchangeError, document_fields, read_documents
from fedgrove.lockstep import sum_fields

ROSTER = ["a", "b", "c"]


def test_every_site_reads_every_sites_document_from_the_sum() -> None:
    sent = [document_fields({"n": i, "name": site}, roster=ROSTER, site=site) for i, site in enumerate(ROSTER)]
    assert read_documents(sum_fields(sent), roster=ROSTER) == {"a": {"n": 0, "name": "a"}, "b": {"n": 1, "name": "b"},
                                                              "c": {"n": 2, "name": "c"}}


def test_two_leaves_reporting_as_one_site_and_a_site_missing_are_named() -> None:
    sent = [document_fields({}, roster=ROSTER, site=site) for site in ("a", "a", "b")]
    with pytest.raises(DocumentExchangeError) as raised:
        read_documents(sum_fields(sent), roster=ROSTER)
    assert str(raised.value) == ("more than one leaf reported as a; no leaf reported as c (fix: run exactly one leaf per "
                                 "site, and make the branch's aggregation target equal the number of sites, 3)")


def test_a_row_signed_by_another_site_is_refused() -> None:
    fields = [document_fields({}, roster=["x", "b", "c"], site="x")] + \
             [document_fields({}, roster=ROSTER, site=site) for site in ("b", "c")]
    with pytest.raises(DocumentExchangeError, match=r"^expected site a's row to hold its own document, got one signed "
                                                    r"'x'"):
        read_documents(sum_fields(fields), roster=ROSTER)


def test_a_document_too_large_for_its_row_is_refused_before_anything_is_sent() -> None:
    rng = np.random.default_rng(0)
    noise = "".join(chr(c) for c in rng.integers(0x4E00, 0x9FFF, size=ROW_BYTES))
    with pytest.raises(DocumentExchangeError, match=r"^expected site a's description to fit 65536 bytes compressed"):
        document_fields({"names": noise}, roster=ROSTER, site="a")


def test_a_site_outside_the_roster_is_refused() -> None:
    with pytest.raises(DocumentExchangeError, match=r"^expected site 'z' to be one of the federation's sites"):
        document_fields({}, roster=ROSTER, site="z")
