"""Reads an uploaded `.npz` archive defensively: no pickle, bounded memory, every entry checked.

An archive is a zip of `.npy` files. Before anything is decompressed, the zip directory is checked
(entry count, names, declared sizes); each entry's `.npy` header is checked (no object dtype, a size
that matches the entry) before its data is read; zipfile never inflates an entry past its declared
size, so a decompression bomb is refused by the sum of declared sizes alone.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from aggregator.errors import BadRequest, PayloadTooLarge

FEDERATED_LEARNING = "federated_learning"
FEDERATED_ANALYTICS = "federated_analytics"
PAYLOAD_KIND_KEY = "__bk_payload_kind__"
Kind = Literal["federated_learning", "federated_analytics"]

_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}\.npy$")
_LAYER_NAME = re.compile(r"^layer_(\d+)$")
_LAYER_DTYPE_KINDS = frozenset("iuf")
_FIELD_DTYPE_KINDS = frozenset("biufUS")


@dataclass
class ParsedArchive:
    kind: Kind
    weighting: float
    layers: list[np.ndarray] = field(default_factory=list)
    fields: dict[str, np.ndarray] = field(default_factory=dict)


def read_archive(path: Path, *, max_decompressed_bytes: int, max_entries: int) -> ParsedArchive:
    entries = _read_entries(path, max_decompressed_bytes=max_decompressed_bytes, max_entries=max_entries)
    kind = _declared_kind(entries)
    if kind == FEDERATED_ANALYTICS:
        return _analytics(entries)
    return _learning(entries)


def _read_entries(path: Path, *, max_decompressed_bytes: int, max_entries: int) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise BadRequest("not an npz archive")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise PayloadTooLarge(f"archive has more than {max_entries} entries")
            declared = 0
            names: set[str] = set()
            for info in infos:
                if not _ENTRY_NAME.match(info.filename) or info.filename in names:
                    raise BadRequest(f"unexpected archive entry '{info.filename[:100]}'")
                names.add(info.filename)
                declared += info.file_size
            if declared > max_decompressed_bytes:
                raise PayloadTooLarge(f"archive decompresses to more than {max_decompressed_bytes} bytes")
            return {info.filename.removesuffix(".npy"): _read_npy(archive, info) for info in infos}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise BadRequest("not an npz archive") from exc


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    key = info.filename.removesuffix(".npy")
    with archive.open(info) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported npy version {version}")
        except ValueError as exc:
            raise BadRequest(f"entry '{key}' is not a valid npy array") from exc
        if dtype.hasobject:
            raise BadRequest(f"entry '{key}' holds Python objects; pickled data is not accepted")
        if dtype.fields is not None or dtype.kind not in "biufcUS":
            raise BadRequest(f"entry '{key}' has unsupported dtype {dtype}")
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise BadRequest(f"entry '{key}' declares more data than it holds")
    with archive.open(info) as handle:
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BadRequest(f"entry '{key}' is not a valid npy array") from exc


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
    if "weighting" not in entries:
        raise BadRequest("missing weighting")
    weighting = entries["weighting"]
    if weighting.size != 1 or weighting.dtype.kind not in "iuf":
        raise BadRequest("weighting must be a single number")
    value = float(weighting.reshape(-1)[0])
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"weighting must be a finite number greater than 0, got {value}")
    return value


def _learning(entries: dict[str, np.ndarray]) -> ParsedArchive:
    weighting = _weighting(entries)
    indexed: dict[int, np.ndarray] = {}
    for key, array in entries.items():
        if key in ("weighting", PAYLOAD_KIND_KEY):
            continue
        match = _LAYER_NAME.match(key)
        if match is None:
            raise BadRequest(f"unexpected entry '{key}' in a federated_learning archive")
        indexed[int(match.group(1))] = array
    if not indexed:
        raise BadRequest("no layer_* arrays")
    if sorted(indexed) != list(range(len(indexed))):
        raise BadRequest("layers must be numbered layer_0 to layer_N without gaps")
    layers = [indexed[i] for i in range(len(indexed))]
    for index, layer in enumerate(layers):
        if layer.dtype.kind not in _LAYER_DTYPE_KINDS:
            raise BadRequest(f"layer_{index} has unsupported dtype {layer.dtype}")
        if layer.dtype.kind == "f" and not np.isfinite(layer).all():
            raise BadRequest(f"layer_{index} contains NaN or Inf")
    return ParsedArchive(kind=FEDERATED_LEARNING, weighting=weighting, layers=layers)


def _analytics(entries: dict[str, np.ndarray]) -> ParsedArchive:
    fields = {k: v for k, v in entries.items() if k not in ("weighting", PAYLOAD_KIND_KEY)}
    if not fields:
        raise BadRequest("no fields in a federated_analytics archive")
    for key, array in fields.items():
        if _LAYER_NAME.match(key):
            raise BadRequest(f"unexpected entry '{key}' in a federated_analytics archive")
        if array.ndim == 0:
            raise BadRequest(f"field '{key}' must be at least 1-D")
        if array.dtype.kind not in _FIELD_DTYPE_KINDS:
            raise BadRequest(f"field '{key}' has unsupported dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadRequest(f"field '{key}' contains NaN or Inf")
    return ParsedArchive(kind=FEDERATED_ANALYTICS, weighting=0.0, fields=fields)
