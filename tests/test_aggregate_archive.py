"""The aggregate's archive: each entry deflated when a sample of it deflates well, stored otherwise, and read
back by `np.load` exactly as written."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from aggregator.aggregate_archive import write_aggregate


def written(entries: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    handle = io.BytesIO()
    write_aggregate(handle, entries)
    with zipfile.ZipFile(io.BytesIO(handle.getvalue())) as archive:
        methods = {info.filename.removesuffix(".npy"): info.compress_type for info in archive.infolist()}
    with np.load(io.BytesIO(handle.getvalue()), allow_pickle=False) as loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    return methods, arrays


def test_trained_weights_are_stored_and_zeros_deflated_and_both_read_back_exactly() -> None:
    generator = np.random.default_rng(3)
    entries = {"layer_0": generator.normal(size=(300, 300)).astype(np.float32),
               "layer_1": np.zeros(300_000, dtype=np.float32),
               "layer_2": generator.normal(size=7).astype(np.float32)}
    methods, arrays = written(entries)
    assert methods == {"layer_0": zipfile.ZIP_STORED, "layer_1": zipfile.ZIP_DEFLATED,
                       "layer_2": zipfile.ZIP_STORED}
    for name, array in entries.items():
        assert arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(arrays[name], array)


def test_the_sample_spans_the_entry_not_only_its_start() -> None:
    """8 MiB of float32 whose first MiB is noise and the rest zeros: a sample of the first MiB alone said
    "store" and 7 MiB of zeros went out as they are; pieces from start to end see the zeros."""
    layer = np.zeros(2 * 1024 * 1024, dtype=np.float32)
    layer[: 256 * 1024] = np.random.default_rng(5).normal(size=256 * 1024)
    methods, arrays = written({"layer_0": layer})
    assert methods == {"layer_0": zipfile.ZIP_DEFLATED}
    np.testing.assert_array_equal(arrays["layer_0"], layer)


def test_an_empty_entry_is_stored() -> None:
    methods, arrays = written({"layer_0": np.zeros(0, dtype=np.float32)})
    assert methods == {"layer_0": zipfile.ZIP_STORED} and arrays["layer_0"].shape == (0,)
