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


def regression_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n, dtype=float) * 1.5})


def test_a_small_regression_site_holds_out_about_its_test_fraction_across_the_targets_range() -> None:
    """14 records: deciles of 1 or 2 records held out round(0.2 * 2) = 0 of each, so the site had no test part.
    Three quantile strata (round(0.2 * 14) = 3) of 5, 5 and 4 records hold out one record each."""
    prepared = prepare_site_table(regression_table(14), site="a", target="y", test_fraction=0.2, seed=0,
                                  task="regression")
    assert (len(prepared.train), len(prepared.test)) == (11, 3)
    thirds = sorted(int(x) // 5 for x in prepared.test["x"])  # records 0-4, 5-9 and 10-13
    assert thirds == [0, 1, 2]


def test_a_regression_site_of_31_records_no_longer_holds_out_a_third() -> None:
    """Deciles of 3 or 4 records held out one each: 10 of 31 (32%). round(0.2 * 31) = 6 strata hold out 6."""
    prepared = prepare_site_table(regression_table(31), site="a", target="y", test_fraction=0.2, seed=0,
                                  task="regression")
    assert len(prepared.test) == 6


def test_a_regression_site_of_100_records_is_still_split_by_deciles() -> None:
    prepared = prepare_site_table(regression_table(100), site="a", target="y", test_fraction=0.2, seed=0,
                                  task="regression")
    assert len(prepared.test) == 20
    assert sorted(int(x) // 10 for x in prepared.test["x"]) == [d for d in range(10) for _ in range(2)]
