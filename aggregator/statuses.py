"""The statuses an aggregation and a branch's run can be in, as stored in the database.

They are `StrEnum`s: a member compares equal to the string the database holds, so rows read back as plain
strings compare with them directly.
"""

from __future__ import annotations

from enum import StrEnum


class AggregationStatus(StrEnum):
    OPEN = "open"  # taking uploads; one per branch
    COMPLETE = "complete"  # averaged; its id is the aggregate's file id
    SET_ASIDE = "set_aside"  # uploads of a stopped run, kept but never averaged
    EXPIRED = "expired"  # complete, its aggregate deleted by the retention policy (`retention`)


class RunStatus(StrEnum):
    START = "start"  # the only status in which leaves upload
    PAUSE = "pause"
    STOP = "stop"  # a later start begins a new run number
