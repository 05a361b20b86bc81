"""Checks over a parsed JSON value: is every string UTF-8 text, how deep does it nest, every scalar in it.

Python's json reads lone UTF-16 surrogates ("\\ud800" is a valid JSON escape but no UTF-8 text) and nests as
deep as its parser allows; the server stores and answers only what it can write back. A NUL character
("\\u0000") is text, but PostgreSQL's text columns cannot hold it (SQLite's can): refused on every database.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_DEPTH = 32
NUL = "\x00"


def is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nesting_depth(value: object, limit: int = MAX_DEPTH) -> int:
    """How deep lists and objects nest, a scalar counting as one level (counting stops past `limit`)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
        ]
    return depth


def scalars(value: object) -> Iterator[object]:
    """Every key and scalar of a JSON value, however deep (without recursion)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            yield item
