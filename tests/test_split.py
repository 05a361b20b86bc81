"""`fedgrove split`: one table into per-site files, iid (stratified) or with Dirichlet label skew."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedgrove.split import split_table, write_split
from tests.data_sets import breast_cancer

FRAME = breast_cancer()


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_parts_are_disjoint_and_cover_the_table(split: str) -> None:
    parts = split_table(FRAME, target="diagnosis", sites=5, split=split, seed=0)  # type: ignore[arg-type]
    assert list(parts) == [f"site-{i}" for i in range(1, 6)]
    indices = np.concatenate([p.index.to_numpy() for p in parts.values()])
    assert len(indices) == len(set(indices)) == len(FRAME)


def test_iid_parts_have_equal_size_and_label_balance() -> None:
    parts = split_table(FRAME, target="diagnosis", sites=5, split="iid", seed=0)
    assert {len(p) for p in parts.values()} <= {113, 114}
    shares = [float((p["diagnosis"] == "malignant").mean()) for p in parts.values()]
    assert max(shares) - min(shares) < 0.02


def test_dirichlet_split_is_reproducible_skews_labels_and_gives_every_site_min_records() -> None:
    first = split_table(FRAME, target="diagnosis", sites=5, split="dirichlet", seed=3, min_records=25)
    again = split_table(FRAME, target="diagnosis", sites=5, split="dirichlet", seed=3, min_records=25)
    other = split_table(FRAME, target="diagnosis", sites=5, split="dirichlet", seed=4, min_records=25)
    assert all(first[s].index.equals(again[s].index) for s in first)
    assert any(not first[s].index.equals(other[s].index) for s in first)
    assert min(len(p) for p in first.values()) >= 25
    shares = [float((p["diagnosis"] == "malignant").mean()) for p in first.values()]
    assert max(shares) - min(shares) > 0.3


def test_an_iid_split_too_thin_for_min_records_names_the_fix() -> None:
    with pytest.raises(ValueError) as raised:
        split_table(FRAME, target="diagnosis", sites=60, split="iid", min_records=10)
    assert str(raised.value) == ("expected every site to get >= 10 records, but an iid split of 569 records over 60 "
                                 "sites gives the smallest 9 (fix: use fewer sites, or lower --min-records)")


def test_a_target_that_is_not_a_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"^expected a target column 'outcome', got columns \['mean radius'"):
        split_table(FRAME, target="outcome", sites=2)


def test_the_cli_writes_one_csv_per_site_that_reads_back_equal(tmp_path: Path) -> None:
    """Run from the table's folder with a relative --out, as the README does: the printed block names each file
    by its absolute path, which a spec kept in any folder reads right."""
    FRAME.to_csv(tmp_path / "all.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "fedgrove_cli", "split", "all.csv", "--target",
                           "diagnosis", "--sites", "3", "--out", "sites"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == ["site-1.csv", "site-2.csv", "site-3.csv"]
    assert f"  site-1: {{data: {tmp_path / 'sites' / 'site-1.csv'}}}" in done.stdout
    expected = split_table(FRAME, target="diagnosis", sites=3)
    for name, part in expected.items():
        back = pd.read_csv(tmp_path / "sites" / f"{name}.csv")
        pd.testing.assert_frame_equal(back, part.reset_index(drop=True), check_exact=False, rtol=1e-12)


def test_write_split_returns_the_paths(tmp_path: Path) -> None:
    paths = write_split({"a": FRAME.iloc[:3]}, tmp_path)
    assert paths == {"a": tmp_path / "a.csv"}
