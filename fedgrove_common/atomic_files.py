"""Writing local files so that a reader never sees half of one, and a crash leaves the old file or the new.

The bytes go to a temporary file in the target's folder (so the rename stays on one filesystem), which is
fsynced, renamed over the target, and the folder fsynced so that the rename itself survives a crash.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# "~" is in no valid name (`names.NAME_RULE`): a temporary file is never taken for a stored one.
TEMP_PREFIX = ".put~"


@contextmanager
def staged(folder: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A new temporary file in `folder` to write to: fsynced when the block ends, deleted if it raises.
    The caller renames it into place (`replace_durably`) or deletes it."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield temp, handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def staged_copy(folder: Path, source: Path) -> Path:
    """A fsynced temporary copy of `source` in `folder` (see `staged`)."""
    with staged(folder) as (temp, handle), open(source, "rb") as original:
        shutil.copyfileobj(original, handle, length=1024 * 1024)
    return temp


def replace_durably(file: Path, target: Path) -> None:
    """Rename `file` (already fsynced, on the target's filesystem) over `target`, then fsync the folder."""
    os.replace(file, target)
    fsync_dir(target.parent)


def move_durably(file: Path, target: Path) -> None:
    """Make `file` (on the target's filesystem) the file `target`: fsync it, rename it, fsync the folder."""
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())
    replace_durably(file, target)


def create_durably(path: Path, data: bytes) -> bool:
    """Write a new file `path` (mode 0600) holding `data`, whole or not at all; False, and nothing written, if
    `path` exists already (another process created it first: a hard link, unlike a rename, never replaces)."""
    with staged(path.parent) as (temp, handle):
        handle.write(data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds the new name (a no-op where unsupported)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
