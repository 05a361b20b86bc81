"""Reads one entry of a zip archive: a small entry whole in one call, a large one 64 KiB at a time.

An entry of at most `WHOLE_ENTRY_BYTES` (compressed and inflated) is inflated by libdeflate (the `deflate`
package) in a single call, straight from a read-only mapping of the file into a buffer of exactly the
declared size, which the caller then uses as the array's memory. Reading a P = 1e6 archive so took
16.7-20.2 ms against 19.1-24.9 ms streamed (no 64 KiB steps, no input buffer to zero and fill), and the
GIL is released for the whole call. A larger entry is streamed, so memory stays one array plus 64 KiB
whatever the entry's size.

For streamed entries, zipfile's reader inflates each read into a new bytes object and joins those, and the
caller then copies the result into its array: three copies of every byte, each into freshly allocated
memory. In the server's threads the kernel's page faults for that memory were a third of the CPU an upload
cost. Here inflated bytes go from a 64 KiB output (small enough to be reused from the heap) straight into
the target. Streamed inflating and every CRC-32 use zlib-ng (python-zlib-ng), which does both faster than
the zlib CPython links: inflate is most of the server's CPU per upload.

The rules are zipfile's: the local header must name the entry the directory names, the entry's data must
end before the next entry starts, no more than the declared size is ever produced (so memory is bounded
by the directory's sizes, which the caller has checked), and the CRC-32 is checked once the entry has
been read to its end.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
from typing import BinaryIO

import deflate
from zlib_ng import zlib_ng

CHUNK = 64 * 1024
WHOLE_ENTRY_BYTES = 8 * 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra-field lengths (APPNOTE 4.3.7)
_UTF8_NAME = 0x800


class EntryError(ValueError):
    """The entry's bytes break the zip format (header, extent, length or CRC-32)."""


InflateError = zlib_ng.error


class ZipEntryReader(io.RawIOBase):
    """A readable stream of one stored or deflated entry. `data_end` is the offset its data must end by."""

    def __init__(self, handle: BinaryIO, info: zipfile.ZipInfo, *, data_end: int) -> None:
        super().__init__()
        handle.seek(info.header_offset)
        header = handle.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise EntryError("truncated local header")
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise EntryError("bad local header signature")
        encoding = "utf-8" if info.flag_bits & _UTF8_NAME else "cp437"
        if handle.read(name_length).decode(encoding, errors="replace") != info.orig_filename:
            raise EntryError("file name in directory and local header differ")
        start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        if start + info.compress_size > data_end:
            raise EntryError("entry overlaps the next one")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise EntryError("stored entry whose sizes differ")
        handle.seek(start)
        self._handle = handle
        self._data_start = start
        self._compressed_left = info.compress_size
        self._left = self._declared_size = info.file_size
        self._expected_crc = info.CRC
        self._crc = 0
        deflated = info.compress_type == zipfile.ZIP_DEFLATED
        self._inflater = zlib_ng.decompressobj(-zlib_ng.MAX_WBITS) if deflated else None
        self._input = bytearray(CHUNK)
        self._pending = memoryview(b"")
        self.fits_whole = max(info.compress_size, info.file_size) <= WHOLE_ENTRY_BYTES

    def read_whole(self) -> bytearray:
        """The whole entry in a buffer of exactly its declared size, CRC-32 checked. Only for an entry that
        `fits_whole`, before anything else was read from it."""
        assert self.fits_whole and self._left == self._declared_size, "read_whole: a small entry, read once"
        # The entry's bytes are read where they lie, through a read-only mapping of the file: no buffer to
        # zero and fill first (the file was just written, so its pages are in the page cache).
        with mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped)[self._data_start : self._data_start + self._compressed_left] as compressed:
                if len(compressed) != self._compressed_left:
                    raise EntryError("truncated entry data")
                if self._inflater is None:
                    whole = bytearray(compressed)
                else:
                    try:
                        # Never writes past the declared size (a longer stream is an error); may stop short.
                        whole = deflate.deflate_decompress(compressed, self._left)
                    except deflate.DeflateError as exc:
                        raise EntryError("broken deflate stream") from exc
        self._compressed_left = 0
        if len(whole) != self._left:
            raise EntryError("truncated entry data")
        self._left = 0
        if zlib_ng.crc32(whole) != self._expected_crc:
            raise EntryError("bad CRC-32")
        return whole

    def readable(self) -> bool:
        return True

    @property
    def remaining(self) -> int:
        """Bytes of the entry not read yet."""
        return self._left

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if self._inflater is None:
            filled = self._read_stored(view[:want])
        else:
            filled = self._read_deflated(view[:want])
        self._crc = zlib_ng.crc32(view[:filled], self._crc)
        self._left -= filled
        if self._left == 0 and self._crc != self._expected_crc:
            raise EntryError("bad CRC-32")
        return filled

    def read_to_end(self) -> None:
        """Consume what is left of the entry (bytes after an array's data), which checks its CRC-32."""
        scratch = bytearray(CHUNK)
        while self._left:
            if not self.readinto(scratch):
                break

    def _read_stored(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            count = self._handle.readinto(view[filled:])
            if not count:
                raise EntryError("truncated entry data")
            filled += count
        return filled

    def _read_deflated(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            if not self._pending:
                self._pending = memoryview(self._inflate_some())
                if not self._pending:
                    raise EntryError("truncated entry data")
            take = min(len(self._pending), len(view) - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        return filled

    def _inflate_some(self) -> bytes:
        """Up to CHUNK inflated bytes; empty once the stream has ended or nothing more can come out of it."""
        assert self._inflater is not None
        while not self._inflater.eof:
            if self._inflater.unconsumed_tail:
                data: bytes | memoryview = self._inflater.unconsumed_tail
            elif self._compressed_left:
                count = self._handle.readinto(memoryview(self._input)[: min(CHUNK, self._compressed_left)])
                if not count:
                    return b""
                self._compressed_left -= count
                data = memoryview(self._input)[:count]
            else:
                # Every compressed byte is in, but zlib may still hold output the CHUNK cap kept back (the
                # rest of a long match, as in a layer of zeros): drain it.
                data = b""
            out = self._inflater.decompress(data, CHUNK)
            if out:
                return out
            if not data:
                return b""
        return b""
