"""Reads an uploaded `.npz` archive defensively: no pickle, bounded memory, every entry checked.

An archive is a zip of `.npy` files. Before anything is decompressed, the zip directory is checked:
its records are counted before zipfile builds an object for each, then the entries' names, flags,
compression methods and declared sizes. Each entry is then read by `npy_entry`, its header checked before
its data is read. Only stored and deflated entries are read: `ZipEntryReader` inflates in bounded steps
and never past the declared size, so a decompression bomb is refused by the sum of declared sizes alone (bzip2 and lzma are refused outright; zipfile's
readers for them decompress a whole read at once, whatever the entry declares).

Each archive also gets a fingerprint of what it says, from the zip directory's CRC-32 and size of every
entry (the CRC covers the entry's `.npy` bytes, not the zip's timestamps): free to compute, so an upload
is never hashed twice. A fingerprint is a hint: equal fingerprints are confirmed by `same_content`.
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from aggregator.errors import BadRequest, PayloadTooLarge
from aggregator.npy_entry import SumBudget, in_native_byte_order, read_npy
from aggregator.zip_directory import zip_directory
from fedgrove_common.protocol import (
    FEDERATED_ANALYTICS,
    FEDERATED_LEARNING,
    LAYER_NAME,
    LAYER_PREFIX,
    PAYLOAD_KIND_KEY,
    WEIGHTING_KEY,
    layer_name,
)

Kind = Literal["federated_learning", "federated_analytics"]

_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}\.npy$")
_LAYER_LIKE_NAME = re.compile(rf"^{LAYER_PREFIX}[0-9]+$")
# Only floats are averaged: an integer mean would be rounded or wrapped back into its dtype (uint64 2**64-1
# from two leaves averaged to 0, int8 1 and 2 to 1), and a model's integer buffers are no weights.
_LAYER_DTYPE_KINDS = frozenset("f")
# The weighting is the number of samples a leaf trained on. Inside this range a float32 layer times its
# weighting neither underflows (5e-324 turned 0.3 into 0.0) nor passes float64's range, and counts up to
# 1e15 are exact integers.
MIN_WEIGHTING = 1e-6
MAX_WEIGHTING = 1e15
_FIELD_DTYPE_KINDS = frozenset("biufUS")
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})  # what np.savez and savez_compressed write
_ENCRYPTED_OR_PATCHED = 0x01 | 0x20 | 0x40  # general-purpose flag bits zipfile cannot read either



@dataclass
class ParsedArchive:
    kind: Kind
    weighting: float
    layers: list[np.ndarray] = field(default_factory=list)
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: str = ""  # sha256 hex of the entries' names, CRC-32s and sizes
    magnitude: float = 0.0  # the largest |value| in any layer: bounds what the archive adds to a sum


def read_archive(
    path: Path, *, max_decompressed_bytes: int, max_entries: int, max_sum_bytes: int | None = None
) -> ParsedArchive:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; open's errors are the archive's
    except OSError as exc:
        raise BadRequest("not an npz archive") from exc
    with handle:
        return read_archive_from(handle, max_decompressed_bytes=max_decompressed_bytes, max_entries=max_entries,
                                 max_sum_bytes=max_sum_bytes)


def read_archive_from(
    handle: BinaryIO, *, max_decompressed_bytes: int, max_entries: int, max_sum_bytes: int | None = None
) -> ParsedArchive:
    """`read_archive` of an open file on disk (small entries are mapped, so not a BytesIO); it may have been
    renamed or deleted since it was opened. `max_sum_bytes` bounds the running aggregate the archive's values
    would need (`SumBudget`); None for no bound."""
    entries, magnitudes, fingerprint = _read_entries(
        handle, max_decompressed_bytes=max_decompressed_bytes, max_entries=max_entries,
        budget=SumBudget(max_sum_bytes),
    )
    kind = _declared_kind(entries)
    parsed = _analytics(entries, magnitudes) if kind == FEDERATED_ANALYTICS else _learning(entries, magnitudes)
    parsed.fingerprint = fingerprint
    return parsed


def same_content(one: ParsedArchive, other: ParsedArchive) -> bool:
    """Whether two archives say the same thing: kind, weighting and every array (shape, dtype and values)."""
    if (one.kind, one.weighting, len(one.layers), sorted(one.fields)) != (
        other.kind, other.weighting, len(other.layers), sorted(other.fields)
    ):
        return False
    pairs = list(zip(one.layers, other.layers, strict=True))
    pairs += [(array, other.fields[name]) for name, array in one.fields.items()]
    return all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in pairs)


def _fingerprint(infos: list[zipfile.ZipInfo]) -> str:
    described = sorted(f"{info.filename}:{info.CRC:08x}:{info.file_size}" for info in infos)
    return hashlib.sha256("\n".join(described).encode()).hexdigest()


def _read_entries(
    handle: BinaryIO, *, max_decompressed_bytes: int, max_entries: int, budget: SumBudget
) -> tuple[dict[str, np.ndarray], dict[str, float], str]:
    """The arrays by entry name (without .npy), each one's `magnitude`, the fingerprint."""
    try:
        with zip_directory(handle, max_entries=max_entries) as archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise PayloadTooLarge(f"archive has more than {max_entries} entries")
            names: set[str] = set()
            for info in infos:
                _check_entry(info, names)
                names.add(info.filename)
            if sum(info.file_size for info in infos) > max_decompressed_bytes:
                raise PayloadTooLarge(f"archive decompresses to more than {max_decompressed_bytes} bytes")
            starts = sorted(info.header_offset for info in infos) + [archive.start_dir]
            data_end = {offset: starts[index + 1] for index, offset in enumerate(starts[:-1])}
            entries: dict[str, np.ndarray] = {}
            magnitudes: dict[str, float] = {}
            for info in infos:
                key = info.filename.removesuffix(".npy")
                array, magnitudes[key] = read_npy(handle, info, data_end=data_end[info.header_offset],
                                                   budget=budget)
                entries[key] = in_native_byte_order(array)
            return entries, magnitudes, _fingerprint(infos)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        # ValueError: a directory name flagged UTF-8 that is not (zipfile raises UnicodeDecodeError)
        raise BadRequest("not an npz archive") from exc


def _check_entry(info: zipfile.ZipInfo, seen: set[str]) -> None:
    if not _ENTRY_NAME.match(info.filename) or info.filename in seen:
        raise BadRequest(f"unexpected archive entry '{info.filename[:100]}'")
    key = info.filename.removesuffix(".npy")
    if info.flag_bits & _ENCRYPTED_OR_PATCHED:
        raise BadRequest(f"entry '{key}' is encrypted or patched; expected a plain zip entry")
    if info.compress_type not in _METHODS:
        raise BadRequest(
            f"entry '{key}' uses compression method {info.compress_type}; expected 0 (stored) or 8 (deflate)"
        )


def _declared_kind(entries: dict[str, np.ndarray]) -> Kind:
    if PAYLOAD_KIND_KEY not in entries:
        return FEDERATED_LEARNING
    marker = entries[PAYLOAD_KIND_KEY]
    value = str(marker.reshape(-1)[0]) if marker.dtype.kind in "US" and marker.size == 1 else None
    if value == FEDERATED_ANALYTICS:
        return FEDERATED_ANALYTICS
    if value == FEDERATED_LEARNING:
        return FEDERATED_LEARNING
    raise BadRequest("unknown payload kind")


def _weighting(entries: dict[str, np.ndarray]) -> float:
    if WEIGHTING_KEY not in entries:
        raise BadRequest("missing weighting")
    weighting = entries[WEIGHTING_KEY]
    if weighting.size != 1 or weighting.dtype.kind not in "iuf":
        raise BadRequest("weighting must be a single number")
    value = float(weighting.reshape(-1)[0])
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"weighting must be a finite number greater than 0, got {value}")
    if not MIN_WEIGHTING <= value <= MAX_WEIGHTING:
        raise BadRequest(f"expected a weighting between {MIN_WEIGHTING:g} and {MAX_WEIGHTING:g}, got {value:g} "
                         "(fix: send the number of samples the leaf trained on)")
    return value


def _learning(entries: dict[str, np.ndarray], magnitudes: dict[str, float]) -> ParsedArchive:
    weighting = _weighting(entries)
    indexed: dict[int, str] = {}
    for key in entries:
        if key in (WEIGHTING_KEY, PAYLOAD_KIND_KEY):
            continue
        match = LAYER_NAME.match(key)
        if match is None and _LAYER_LIKE_NAME.match(key):
            raise BadRequest(f"entry '{key}' is not a layer name: layers are layer_0, layer_1, ... without "
                             "leading zeros")
        if match is None:
            raise BadRequest(f"unexpected entry '{key}' in a federated_learning archive")
        indexed[int(match.group(1))] = key
    if not indexed:
        raise BadRequest("no layer_* arrays")
    if sorted(indexed) != list(range(len(indexed))):
        raise BadRequest("layers must be numbered layer_0 to layer_N without gaps")
    layers = [entries[indexed[i]] for i in range(len(indexed))]
    for index, layer in enumerate(layers):
        if layer.dtype.kind in "iu":
            raise BadRequest(f"expected {layer_name(index)} in float16, float32 or float64, got {layer.dtype} (fix: "
                             "send the model's weights as floats; an integer buffer, a batch counter say, is no "
                             "weight to average)")
        if layer.dtype.kind not in _LAYER_DTYPE_KINDS:
            raise BadRequest(f"{layer_name(index)} has unsupported dtype {layer.dtype}")
        if not math.isfinite(magnitudes[indexed[index]]):
            raise BadRequest(f"{layer_name(index)} contains NaN or Inf")
    largest = max(magnitudes[key] for key in indexed.values())
    return ParsedArchive(kind=FEDERATED_LEARNING, weighting=weighting, layers=layers, magnitude=largest)


def _analytics(entries: dict[str, np.ndarray], magnitudes: dict[str, float]) -> ParsedArchive:
    fields = {k: v for k, v in entries.items() if k not in (WEIGHTING_KEY, PAYLOAD_KIND_KEY)}
    if not fields:
        raise BadRequest("no fields in a federated_analytics archive")
    for key, array in fields.items():
        if _LAYER_LIKE_NAME.match(key):
            raise BadRequest(f"unexpected entry '{key}' in a federated_analytics archive")
        if array.ndim == 0:
            raise BadRequest(f"field '{key}' must be at least 1-D")
        if array.dtype.kind not in _FIELD_DTYPE_KINDS:
            raise BadRequest(f"field '{key}' has unsupported dtype {array.dtype}")
        if not math.isfinite(magnitudes[key]):
            raise BadRequest(f"field '{key}' contains NaN or Inf")
    return ParsedArchive(kind=FEDERATED_ANALYTICS, weighting=0.0, fields=fields)
