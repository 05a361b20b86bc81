"""Splitting the breast-cancer data into a test set and one partition per organisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedgrove.data import (
    TARGET_COLUMN,
    feature_columns,
    load_dataset,
    read_partition,
    split_dataset,
    write_partitions,
)

FRAME = load_dataset()


def test_load_dataset_has_569_records_30_float_features_and_an_integer_target() -> None:
    assert FRAME.shape == (569, 31)
    assert list(FRAME.columns) == [*feature_columns(), TARGET_COLUMN]
    assert len(feature_columns()) == 30
    assert FRAME[TARGET_COLUMN].dtype == np.int64
    assert FRAME[TARGET_COLUMN].value_counts().to_dict() == {1: 357, 0: 212}
    assert all(FRAME[c].dtype == np.float64 for c in feature_columns())


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover_the_training_set(split: str) -> None:
    test, partitions = split_dataset(FRAME, organisations=5, split=split, seed=3)
    assert list(partitions) == ["org-1", "org-2", "org-3", "org-4", "org-5"]
    indices = [set(part.index) for part in partitions.values()]
    assert sum(len(i) for i in indices) == len(set().union(*indices))  # pairwise disjoint
    assert set().union(*indices) == set(FRAME.index) - set(test.index)
    assert set(test.index).isdisjoint(set().union(*indices))
    for part in partitions.values():
        pd.testing.assert_frame_equal(part, FRAME.loc[part.index])


def test_test_set_is_a_stratified_20_percent_that_depends_on_the_seed() -> None:
    test0, _ = split_dataset(FRAME, organisations=5, seed=0)
    test1, _ = split_dataset(FRAME, organisations=5, seed=1)
    again, _ = split_dataset(FRAME, organisations=5, seed=0)
    for test in (test0, test1):
        assert len(test) == 114
        assert test[TARGET_COLUMN].value_counts().to_dict() == {1: 72, 0: 42}
    assert list(test0.index) == list(again.index)
    assert set(test0.index) != set(test1.index)


def test_iid_partitions_have_equal_size_and_class_balance() -> None:
    _, partitions = split_dataset(FRAME, organisations=5, split="iid", seed=0)
    assert {org: (len(p), int(p[TARGET_COLUMN].sum())) for org, p in partitions.items()} == {
        f"org-{i}": (91, 57) for i in range(1, 6)
    }


def test_dirichlet_split_is_reproducible_per_seed_and_differs_between_seeds() -> None:
    _, first = split_dataset(FRAME, organisations=5, split="dirichlet", seed=7)
    _, again = split_dataset(FRAME, organisations=5, split="dirichlet", seed=7)
    _, other = split_dataset(FRAME, organisations=5, split="dirichlet", seed=8)
    assert {o: list(p.index) for o, p in first.items()} == {o: list(p.index) for o, p in again.items()}
    assert {o: list(p.index) for o, p in first.items()} != {o: list(p.index) for o, p in other.items()}


@pytest.mark.parametrize("min_records", [10, 40])
def test_dirichlet_split_gives_every_organisation_at_least_min_records(min_records: int) -> None:
    for seed in range(10):
        _, partitions = split_dataset(
            FRAME, organisations=5, split="dirichlet", seed=seed, min_records=min_records
        )
        assert min(len(p) for p in partitions.values()) >= min_records


def test_dirichlet_split_skews_the_labels_per_organisation() -> None:
    _, partitions = split_dataset(FRAME, organisations=5, split="dirichlet", alpha=0.5, seed=0)
    assert {org: (len(p), int(p[TARGET_COLUMN].sum())) for org, p in partitions.items()} == {
        "org-1": (121, 98), "org-2": (41, 6), "org-3": (27, 23), "org-4": (110, 5), "org-5": (156, 153),
    }


def test_dirichlet_split_with_too_few_records_for_min_records_raises() -> None:
    with pytest.raises(ValueError) as caught:
        split_dataset(FRAME, organisations=5, split="dirichlet", min_records=100)
    assert str(caught.value) == (
        "expected at least organisations * min_records = 500 training records, got 455 "
        "(fix: lower min_records or organisations)"
    )


def test_dirichlet_split_that_never_reaches_min_records_raises_after_bounded_tries() -> None:
    with pytest.raises(ValueError, match=r"^expected every organisation to get >= 80 records, but after "
                       r"1000 Dirichlet\(alpha=0\.01\) draws .* \(fix: raise alpha"):
        split_dataset(FRAME, organisations=5, split="dirichlet", alpha=0.01, min_records=80)


def test_an_iid_split_too_thin_for_min_records_raises_naming_the_fix() -> None:
    """50 organisations get 9 records each; their leaves refused federated preprocessing only once the run
    had started, and the other leaves then waited 3 x 120 s for them."""
    with pytest.raises(ValueError) as caught:
        split_dataset(FRAME, organisations=50, split="iid", min_records=10)
    assert str(caught.value) == (
        "expected every organisation to get >= 10 records, but an iid split of 455 training records over 50 "
        "organisations gives the smallest 9 (fix: use fewer organisations, or lower min_records)"
    )
    _, partitions = split_dataset(FRAME, organisations=45, split="iid", min_records=10)
    assert min(len(p) for p in partitions.values()) == 10


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match=r"^expected split 'iid' or 'dirichlet', got 'random'$"):
        split_dataset(FRAME, organisations=5, split="random")  # type: ignore[arg-type]


def test_write_partitions_writes_one_csv_per_organisation_that_reads_back_equal(tmp_path: Path) -> None:
    test, partitions = split_dataset(FRAME, organisations=3, seed=0)
    paths = write_partitions(test, partitions, tmp_path / "data")
    assert paths == {name: tmp_path / "data" / f"{name}.csv" for name in ["test", "org-1", "org-2", "org-3"]}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "org-1.csv", "org-2.csv", "org-3.csv", "test.csv"
    ]
    pd.testing.assert_frame_equal(read_partition(paths["org-2"]), partitions["org-2"].reset_index(drop=True))
    pd.testing.assert_frame_equal(read_partition(paths["test"]), test.reset_index(drop=True))


def test_read_partition_names_the_file_and_the_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "org-1.csv"
    FRAME.drop(columns=["worst radius", TARGET_COLUMN]).head(3).to_csv(path, index=False)
    with pytest.raises(ValueError) as caught:
        read_partition(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: expected columns ['worst radius', 'target'] are missing, got columns [")
    assert message.endswith("(fix: write it with write_partitions())")


def test_read_partition_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected a partition CSV at .*nowhere.csv, found none"):
        read_partition(tmp_path / "nowhere.csv")
