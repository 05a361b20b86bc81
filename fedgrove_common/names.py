"""The one rule for names that become file names or object keys: blob keys, run ids, artifact names.

A name is validated before anything touches the disk or the network, so a path-traversal attempt is refused
and nothing else happens. "~" is not allowed, so a temporary file (`atomic_files.TEMP_PREFIX`) is never
mistaken for a stored one.
"""

from __future__ import annotations

import re

NAME_RULE = "1-128 characters from [A-Za-z0-9._-], not '.' or '..'"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None and value not in {".", ".."}
