"""The two ways the server reads an archive's entries give numpy's arrays exactly.

Entries of at most `WHOLE_ENTRY_BYTES` are inflated whole by libdeflate and the array is a view of that
buffer; larger ones are streamed through zlib-ng into a new array. Both must equal `np.load` for every
dtype, byte order and memory order a leaf can send, and must pick the path the size says.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from aggregator import zip_entry
from aggregator.archive import read_archive
from aggregator.errors import BadRequest
from aggregator.zip_entry import WHOLE_ENTRY_BYTES, ZipEntryReader
from fedgrove_common.protocol import FEDERATED_ANALYTICS, PAYLOAD_KIND_KEY

LIMITS = {"max_decompressed_bytes": 1 << 30, "max_entries": 100}


def _saved(path: Path, compressed: bool, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _layers(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "layer_0": rng.standard_normal((30, 7)).astype(np.float32),
        "layer_1": np.asfortranarray(rng.standard_normal((5, 9))),  # float64, Fortran order
        "layer_2": rng.standard_normal(11).astype(">f4"),  # big-endian
        "layer_3": rng.integers(-5, 5, size=(2, 3, 4)).astype(np.float16),
        "layer_4": np.zeros((0, 3), dtype=np.float32),
    }


@pytest.mark.parametrize("compressed", [True, False], ids=["deflated", "stored"])
def test_both_paths_read_a_learning_archive_as_numpy_does(
    tmp_path: Path, entry_reading: str, compressed: bool
) -> None:
    arrays = _layers(np.random.default_rng(7))
    path = _saved(tmp_path / "weights.npz", compressed, weighting=np.array(12.5), **arrays)

    parsed = read_archive(path, **LIMITS)

    assert parsed.weighting == 12.5
    for index, expected in enumerate(arrays.values()):
        got = parsed.layers[index]
        # in this machine's byte order: a big-endian float32 is read as the float32 it is
        assert (got.dtype, got.shape) == (expected.dtype.newbyteorder("="), expected.shape)
        np.testing.assert_array_equal(got, expected)
    assert parsed.layers[1].flags.f_contiguous


def test_both_paths_read_analytics_fields_as_numpy_does(tmp_path: Path, entry_reading: str) -> None:
    fields = {"age_n": np.array([3, 4]), "age_sum": np.array([1.5, 2.5]), "label": np.array(["a", "bc"])}
    kind = np.array(FEDERATED_ANALYTICS)
    path = _saved(tmp_path / "fields.npz", True, weighting=np.array(1.0), **{PAYLOAD_KIND_KEY: kind}, **fields)

    parsed = read_archive(path, **LIMITS)

    assert parsed.kind == FEDERATED_ANALYTICS
    assert sorted(parsed.fields) == sorted(fields)
    for name, expected in fields.items():
        assert parsed.fields[name].dtype == expected.dtype
        np.testing.assert_array_equal(parsed.fields[name], expected)


def test_entries_up_to_the_size_limit_are_read_whole_and_larger_ones_streamed(tmp_path: Path) -> None:
    small = np.ones(1000, dtype=np.float32)
    large = np.arange(WHOLE_ENTRY_BYTES // 4 + 1, dtype=np.float32)  # just over the limit once the header is added
    path = _saved(tmp_path / "mixed.npz", True, weighting=np.array(2.0), layer_0=small, layer_1=large)

    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        fits = {
            info.filename: ZipEntryReader(handle, info, data_end=path.stat().st_size).fits_whole
            for info in archive.infolist()
        }
    parsed = read_archive(path, **LIMITS)

    assert fits == {"weighting.npy": True, "layer_0.npy": True, "layer_1.npy": False}
    np.testing.assert_array_equal(parsed.layers[0], small)
    np.testing.assert_array_equal(parsed.layers[1], large)


def test_a_whole_entry_is_refused_when_its_stream_inflates_past_the_declared_size(tmp_path: Path) -> None:
    """libdeflate is given a buffer of exactly the declared size: a longer stream is an error, never an
    allocation beyond what the directory declared (and the limits checked)."""
    path = _saved(tmp_path / "weights.npz", True, weighting=np.array(1.0), layer_0=np.zeros(1000))
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        info = archive.getinfo("layer_0.npy")
        info.file_size -= 1
        reader = ZipEntryReader(handle, info, data_end=path.stat().st_size)
        with pytest.raises(zip_entry.EntryError, match="broken deflate stream"):
            reader.read_whole()


@pytest.mark.parametrize("mib", [11, 16, 12])
def test_a_large_constant_layer_is_read_to_its_last_byte(tmp_path: Path, mib: int) -> None:
    """A zero-initialised layer over the whole-entry size is streamed. Deflate packs it so densely that the
    last compressed bytes are consumed while zlib still holds output it could not return under the 64 KiB
    cap; the reader must drain that instead of calling the entry truncated (11 and 16 MiB were refused)."""
    layer = np.zeros(mib * 2**20 // 4, dtype=np.float32)
    path = _saved(tmp_path / "zeros.npz", True, weighting=np.array(3.0), layer_0=layer)

    parsed = read_archive(path, **LIMITS)

    assert parsed.weighting == 3.0
    np.testing.assert_array_equal(parsed.layers[0], layer)


def _with_an_outlier(rng_seed: int) -> dict[str, np.ndarray]:
    layer = np.random.default_rng(rng_seed).uniform(-7.0, 3.0, 1_000_000).astype(np.float32)  # 16 slices streamed
    layer[-3] = -7.5
    return {"layer_0": layer, "layer_1": np.arange(5, dtype=np.float16) * -9}


def test_both_paths_give_the_largest_magnitude_over_all_layers(tmp_path: Path, entry_reading: str) -> None:
    path = _saved(tmp_path / "weights.npz", True, weighting=np.array(2.0), **_with_an_outlier(3))

    assert read_archive(path, **LIMITS).magnitude == 36.0  # layer_1's -36 beats layer_0's -7.5

    smaller = {**_with_an_outlier(3), "layer_1": np.arange(5, dtype=np.float16)}
    assert read_archive(_saved(tmp_path / "smaller.npz", True, weighting=np.array(2.0), **smaller), **LIMITS).magnitude == 7.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", [0, 500_000, -1], ids=["first", "middle", "last"])
def test_both_paths_find_nan_or_inf_anywhere_in_a_layer(
    tmp_path: Path, entry_reading: str, bad: float, where: int
) -> None:
    arrays = _with_an_outlier(4)
    arrays["layer_0"][where] = bad
    path = _saved(tmp_path / "weights.npz", True, weighting=np.array(2.0), **arrays)

    with pytest.raises(BadRequest) as refused:
        read_archive(path, **LIMITS)

    assert refused.value.message == "layer_0 contains NaN or Inf"
