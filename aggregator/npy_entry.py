"""Reads one `.npy` entry of an uploaded archive: its header checked, its data read in bounded steps.

Each entry's header is checked (no object dtype, no more elements than the entry's bytes, what its values
would take in a running aggregate: `SumBudget`) before its data is read. Small entries are inflated whole
and viewed in place; larger ones streamed slice by slice into a new array, their largest |value| taken as
they come. Arrays are returned in this machine's byte order.
"""

from __future__ import annotations

import io
import math
import threading
import tokenize
import zipfile
from typing import BinaryIO

import numpy as np

from aggregator.errors import BadRequest, PayloadTooLarge
from aggregator.zip_entry import InflateError, ZipEntryReader
from fedgrove_common.fedavg import magnitude
from fedgrove_common.protocol import PAYLOAD_KIND_KEY, WEIGHTING_KEY

RUNNING_BYTES_PER_VALUE = 8
_SLICE_BYTES = 256 * 1024  # a streamed entry is read and checked this much at a time
_HEADER_PREFIX_BYTES = 12 + 10_000  # magic, version and length, then numpy's largest header by default


def read_npy(
    handle: BinaryIO, info: zipfile.ZipInfo, *, data_end: int, budget: SumBudget
) -> tuple[np.ndarray, float]:
    """The entry's array and its `magnitude`."""
    key = info.filename.removesuffix(".npy")
    try:
        entry = ZipEntryReader(handle, info, data_end=data_end)
        if entry.fits_whole:
            return _array_in_buffer(key, entry.read_whole(), budget)
        shape, fortran, dtype = _npy_header(entry)
        _check_npy_header(key, shape, dtype, data_bytes=entry.remaining)
        budget.reserve(key, math.prod(shape), dtype)
        array, largest = _read_data(entry, shape, fortran, dtype)
        entry.read_to_end()
        return array, largest
    # EntryError (a ValueError): bad local header, overlap, truncation or CRC; InflateError: a broken deflate
    # stream; TokenError/SyntaxError: numpy's repair of an old-style header; RecursionError: a header nested
    # past the parser's limit ("-" * 4000 + "1")
    except (ValueError, OSError, EOFError, InflateError, SyntaxError, tokenize.TokenError, RecursionError) as exc:
        raise BadRequest(f"entry '{key}' is not a valid npy array") from exc


# numpy parses the header with ast.literal_eval, which CPython 3.11 can break when threads parse at once
# ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905): one parse at a time.
_HEADER_LOCK = threading.Lock()


def _npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    with _HEADER_LOCK:
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"unsupported npy version {version}")


def _array_in_buffer(key: str, whole: bytearray, budget: SumBudget) -> tuple[np.ndarray, float]:
    """The array of a whole `.npy` entry, as a view of `whole` (no copy), and its `magnitude`."""
    header = io.BytesIO(memoryview(whole)[:_HEADER_PREFIX_BYTES])
    shape, fortran, dtype = _npy_header(header)
    offset = header.tell()
    _check_npy_header(key, shape, dtype, data_bytes=len(whole) - offset)
    if min(shape, default=0) < 0:  # np.empty refuses these in the streamed path; frombuffer reads -1 as "all"
        raise ValueError(f"negative dimension in shape {shape}")
    count = math.prod(shape)
    budget.reserve(key, count, dtype)
    # frombuffer refuses a zero-size dtype (b"" strings); such an array has no bytes to take
    flat = np.frombuffer(whole, dtype, count, offset) if dtype.itemsize else np.empty(count, dtype)
    array = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    return array, magnitude(flat)


def _read_data(
    entry: ZipEntryReader, shape: tuple[int, ...], fortran: bool, dtype: np.dtype
) -> tuple[np.ndarray, float]:
    """The array's bytes, read straight into a new array (the header is parsed once, never pickled), and
    its `magnitude`, taken slice by slice while each slice is still in the cache."""
    flat = np.empty(math.prod(shape), dtype=dtype)
    largest = 0.0
    if flat.nbytes:
        view, filled = memoryview(flat).cast("B"), 0
        step = max(_SLICE_BYTES // dtype.itemsize, 1) * dtype.itemsize
        while filled < flat.nbytes:
            want = min(step, flat.nbytes - filled)
            if entry.readinto(view[filled : filled + want]) != want:  # the reader fills all it can
                raise ValueError("truncated npy data")
            values = flat[filled // dtype.itemsize : (filled + want) // dtype.itemsize]
            largest = max(largest, magnitude(values))
            filled += want
    array = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    return array, largest


def in_native_byte_order(array: np.ndarray) -> np.ndarray:
    """`array` with its bytes swapped in place if they are not in this machine's order: a big-endian float32
    is a float32 like any other, and must not stand apart from the others as a dtype of its own."""
    if array.dtype.isnative:
        return array
    native = array.dtype.newbyteorder("=")
    return array.byteswap(inplace=True).view(native) if array.flags.writeable else array.astype(native)


class SumBudget:
    """What an archive's values would take in a running aggregate, counted entry by entry from the `.npy`
    headers, before an entry's data is read: a few KiB of deflated zeros cannot make the server hold GiBs.
    A value takes `RUNNING_BYTES_PER_VALUE` (float64 sums, 64-bit analytics fields), text its own size."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.needed = 0

    def reserve(self, key: str, count: int, dtype: np.dtype) -> None:
        if self.limit is None or key in (WEIGHTING_KEY, PAYLOAD_KIND_KEY):
            return
        self.needed += count * max(dtype.itemsize, RUNNING_BYTES_PER_VALUE)
        if self.needed > self.limit:
            raise PayloadTooLarge(
                f"expected an archive whose running aggregate fits in {self.limit} bytes "
                f"({RUNNING_BYTES_PER_VALUE} per value), got one needing at least {self.needed} (fix: send a "
                "smaller model, or raise FEDGROVE_MAX_SUM_BYTES on the server)"
            )


def _check_npy_header(key: str, shape: tuple[int, ...], dtype: np.dtype, *, data_bytes: int) -> None:
    if dtype.hasobject:
        raise BadRequest(f"entry '{key}' holds Python objects; pickled data is not accepted")
    if dtype.fields is not None or dtype.kind not in "biufcUS":
        raise BadRequest(f"entry '{key}' has unsupported dtype {dtype}")
    if math.prod(shape) * max(dtype.itemsize, 1) > data_bytes:  # an empty dtype still bounds the count
        raise BadRequest(f"entry '{key}' declares more data than it holds")
