"""The leaf's parameter archive against the official client's own `save_weights`: the same entries, in the
same order, with the same dtypes and values; only the compression differs (stored, not deflated)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from branchkey import Client

from fedgrove.weights_archive import write_weights_archive


def test_the_archive_is_save_weights_archive_stored_instead_of_deflated(tmp_path: Path) -> None:
    generator = np.random.default_rng(7)
    parameters = [generator.normal(size=(30, 300)).astype(np.float32), generator.normal(size=300).astype(np.float32),
                  np.array(12, dtype=np.int64), generator.normal(size=(1, 300)).astype(np.float64)]
    official = Client.save_weights(object.__new__(Client), str(tmp_path / "official"), 345.0, parameters)
    ours = write_weights_archive(tmp_path / "ours", 345.0, parameters)
    assert (Path(official).name, ours.name) == ("official.npz", "ours.npz")
    with zipfile.ZipFile(official) as theirs, zipfile.ZipFile(ours) as mine:
        assert [i.filename for i in mine.infolist()] == [i.filename for i in theirs.infolist()]
        assert {i.compress_type for i in theirs.infolist()} == {zipfile.ZIP_DEFLATED}
        assert {i.compress_type for i in mine.infolist()} == {zipfile.ZIP_STORED}
    with np.load(official, allow_pickle=False) as theirs, np.load(ours, allow_pickle=False) as mine:
        assert mine.files == theirs.files == ["weighting", "layer_0", "layer_1", "layer_2", "layer_3"]
        for name in theirs.files:
            assert mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape
            np.testing.assert_array_equal(mine[name], theirs[name])
    assert write_weights_archive(tmp_path / "named.npz", 1.0, parameters).name == "named.npz"
