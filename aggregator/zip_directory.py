"""Finds and counts an upload's zip directory before zipfile reads it.

zipfile parses the whole central directory into one object per record before anything can be counted: a few
hundred bytes of memory for each ~50 bytes of upload, so 150,000 empty entries in 14 MB would cost ~70 MB.
The records are counted here first, 46 bytes at a time, and zipfile is handed only a directory known small.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from aggregator.errors import BadRequest, PayloadTooLarge

# The zip records `_directory_records` reads, as laid out in the zip specification (APPNOTE 4.3).
_END_RECORD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_DIRECTORY_RECORD = struct.Struct("<4s24x3H12x")  # signature, then the name, extra and comment lengths


def zip_directory(handle: BinaryIO, *, max_entries: int) -> zipfile.ZipFile:
    """The archive's directory, read from the open upload (one file handle serves every step) once it is
    known to be a zip with at most `max_entries` records."""
    if not zipfile.is_zipfile(handle):
        raise BadRequest("not an npz archive")
    if _directory_records(handle, stop_after=max_entries) > max_entries:
        raise PayloadTooLarge(f"archive has more than {max_entries} entries")
    return zipfile.ZipFile(handle)


def _directory_records(handle: BinaryIO, *, stop_after: int) -> int:
    """Count the central directory's records, stopping past `stop_after`, reading 46 bytes per record.

    zipfile parses the whole directory into one object per record before anything can be counted:
    a few hundred bytes of memory for each ~50 bytes of upload. The directory is found as zipfile
    finds it: the end record (after an optional comment), then the zip64 end record if there is one.
    """
    start, size = _directory_extent(handle)
    handle.seek(start)
    count = offset = 0
    while offset < size and count <= stop_after:
        record = handle.read(_DIRECTORY_RECORD.size)
        if len(record) != _DIRECTORY_RECORD.size:
            raise BadRequest("not an npz archive")
        signature, name_length, extra_length, comment_length = _DIRECTORY_RECORD.unpack(record)
        if signature != b"PK\x01\x02":
            raise BadRequest("not an npz archive")
        skip = name_length + extra_length + comment_length
        handle.seek(skip, os.SEEK_CUR)
        offset += _DIRECTORY_RECORD.size + skip
        count += 1
    return count


def _directory_extent(handle: BinaryIO) -> tuple[int, int]:
    """(offset, size) of the central directory: it ends where the (zip64) end record starts."""
    file_size = handle.seek(0, os.SEEK_END)
    tail_start = max(file_size - _END_RECORD.size - 0xFFFF, 0)
    handle.seek(tail_start)
    tail = handle.read()
    at = len(tail) - _END_RECORD.size
    if not (tail[at : at + 4] == b"PK\x05\x06" and tail.endswith(b"\0\0")):
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END_RECORD.size:
        raise BadRequest("not an npz archive")
    end_at, size = tail_start + at, _END_RECORD.unpack_from(tail, at)[5]
    zip64_at = end_at - _ZIP64_LOCATOR.size - _ZIP64_END_RECORD.size
    if zip64_at >= 0:
        handle.seek(zip64_at)
        records = handle.read(_ZIP64_END_RECORD.size + _ZIP64_LOCATOR.size)
        if records.startswith(b"PK\x06\x06") and records[_ZIP64_END_RECORD.size :].startswith(b"PK\x06\x07"):
            end_at, size = zip64_at, _ZIP64_END_RECORD.unpack_from(records)[8]
    return end_at - size, size


def declared_inflated_bytes(path: Path, *, max_entries: int) -> int:
    """What the archive at `path` says it inflates to (the sum of its entries' declared sizes), read from its
    directory alone; 0 when it is no readable zip (reading it will refuse it, and quickly)."""
    try:
        with open(path, "rb") as handle, zip_directory(handle, max_entries=max_entries) as archive:
            return sum(info.file_size for info in archive.infolist())
    except Exception:  # whatever it is, the reader answers it properly: this only picks a lane
        return 0
