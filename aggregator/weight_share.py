"""A branch's `max_weight_share`: no leaf may hold more than that share of a round's total weighting.

Off by default. A share is only known once the round's contributions are: it is judged when an upload would
complete the round (or a timed-out round is finished with a quorum). An upload that would then hold too
much is refused; an upload already in the round that would is taken out of it again, and the round waits
for that leaf to send an acceptable one (or for its timeout), since its 201 was given before it could be
judged. One pass: the others' shares are not judged again without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aggregator.errors import BadRequest


def dominating(weightings: Mapping[str, float], limit: float) -> list[str]:
    """The leaves whose weighting is more than `limit` of the total of `weightings` (leaf -> weighting)."""
    total = math.fsum(weightings.values())
    return [leaf_id for leaf_id, weighting in weightings.items() if weighting > limit * total]


def judge_upload(
    weightings: Mapping[str, float], *, leaf_id: str, limit: float | None, target: int
) -> list[str]:
    """`weightings` are the round's with the upload of `leaf_id` in it. When the upload completes the round and
    a limit is set: BadRequest if the upload holds more than `limit` of the total, else the other leaves that
    do (to be taken out); [] otherwise."""
    if limit is None or len(weightings) < target:
        return []
    too_large = dominating(weightings, limit)
    if leaf_id in too_large:
        raise _refusal(weightings[leaf_id], weightings, limit)
    return too_large


def _refusal(weighting: float, weightings: Mapping[str, float], limit: float) -> BadRequest:
    total = math.fsum(weightings.values())
    return BadRequest(
        f"expected a weighting of at most {limit:g} of the round's total weighting (the branch's max_weight_share), "
        f"got {weighting:g} of {total:g}, a share of {weighting / total:.3g} (fix: send the number of samples the "
        "leaf trained on)"
    )
