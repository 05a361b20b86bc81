"""A site's table: records without a label left out, then a seeded, stratified hold-out of test records."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from fedgrove.site_table import prepare_site_table, site_seed


def table(n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=n), "y": np.where(np.arange(n) % 4 == 0, "yes", "no")})


def test_the_hold_out_is_stratified_seeded_and_a_function_of_the_site() -> None:
    first = prepare_site_table(table(), site="a", target="y", test_fraction=0.2, seed=0)
    again = prepare_site_table(table(), site="a", target="y", test_fraction=0.2, seed=0)
    other = prepare_site_table(table(), site="b", target="y", test_fraction=0.2, seed=0)
    assert first.test.equals(again.test)
    assert not first.test["x"].equals(other.test["x"])
    assert (len(first.train), len(first.test)) == (80, 20)
    assert first.test["y"].value_counts().to_dict() == {"no": 15, "yes": 5}
    assert sorted(pd.concat([first.train, first.test])["x"]) == sorted(table()["x"])


def test_records_without_a_label_are_left_out_and_counted() -> None:
    frame = table(20)
    frame.loc[[1, 2, 3], "y"] = None
    prepared = prepare_site_table(frame, site="a", target="y", test_fraction=0.25, seed=0)
    assert prepared.unlabelled == 3 and prepared.records == 17


def test_a_label_with_one_record_stays_in_training() -> None:
    frame = pd.DataFrame({"x": range(11), "y": ["no"] * 10 + ["yes"]})
    prepared = prepare_site_table(frame, site="a", target="y", test_fraction=0.2, seed=0)
    assert "yes" in set(prepared.train["y"]) and len(prepared.test) == 2


def test_site_seed_is_stable_across_processes_and_distinct_per_site() -> None:
    """Not Python's salted `hash`: the first four bytes of SHA-256 of "<seed>:<site>", little-endian."""
    assert site_seed(0, "site-1") == int.from_bytes(hashlib.sha256(b"0:site-1").digest()[:4], "little")
    assert len({site_seed(s, f"site-{i}") for s in range(3) for i in range(1, 6)}) == 15
