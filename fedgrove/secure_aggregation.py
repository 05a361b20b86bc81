"""Secure aggregation over the unchanged BranchKey protocol: pairwise masks that cancel in the server's mean.

Why this module exists: the aggregation server should learn neither a site's parameters nor its record
count, only what the sites agree to reveal, the weighted mean. In the style of Bonawitz et al. (2017), each
pair of sites shares a secret (`fedgrove.secagg_keys`); each round, for each pair, the site of lower rank
(position in the sorted roster) adds the pair's mask (`fedgrove.secagg_masks`) and the other subtracts it,
modulo 2^L. Sites encode `weighting * parameters` and their weighting in fixed point
(`fedgrove.fixed_point`, which states the bits and proves the server's float64 mean exact), mask them, and
upload the result as float64 layers with protocol weighting 1.0. The server's ordinary mean then yields
the sums, from which `unmask_aggregate` returns `sum(w_i x_i) / sum(w_i)`.

Upload layout, for model layers of shapes s_0..s_k: one float64 layer of shape (2, *s_i) per model layer
(hi and lo limbs), then one control layer of shape (3,): the weighting's two limbs and a checksum.
The checksum is sum(c_j e_j) mod 2^L over every encoded limb e_j, with public coefficients c_j derived from
the run and round, masked like everything else. If a pair's masks do not cancel (a wrong secret, a site
missing), the decoded sums and the decoded checksum disagree and `unmask_aggregate` raises instead of
returning a silently wrong model. The coefficients are public, so the checksum detects mistakes, not a
server that tampers on purpose. Every site must upload in every round: there is no dropout recovery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedgrove.fixed_point import FixedPoint, decode, encode, fixed_point_for, limb_sums
from fedgrove.secagg_errors import SecureAggregationError
from fedgrove.secagg_keys import (
    KEY_BYTES,
    SiteKeys,
    make_keys,
    pair_secrets,
    public_key_document,
    read_public_keys,
)
from fedgrove.secagg_masks import checksum, checksum_coefficients, pair_mask

__all__ = [
    "SecureAggregationError", "SiteKeys", "make_keys", "public_key_document", "read_public_keys", "pair_secrets",
    "mask_upload", "unmask_aggregate",
]

_MASK_STREAM = "upload"
_CONTROL_SIZE = 3  # weighting hi, weighting lo, checksum


def _check_roster(roster: Sequence[str], site: str) -> list[str]:
    ordered = sorted(roster)
    if len(set(ordered)) != len(ordered):
        twice = sorted({name for name in ordered if ordered.count(name) > 1})
        raise SecureAggregationError(f"expected distinct site names in the roster, got {', '.join(twice)} more than "
                                     "once (fix: give every site its own name)")
    if site not in ordered:
        raise SecureAggregationError(f"expected site {site!r} to be one of the roster's sites {ordered} (fix: name "
                                     "the site as the spec's sites do)")
    return ordered


def _check_secrets(secrets: Mapping[str, bytes], ordered: list[str], site: str) -> None:
    peers = [name for name in ordered if name != site]
    if sorted(secrets) != peers:
        raise SecureAggregationError(f"expected pair secrets for peers {peers}, got {sorted(secrets)} (fix: derive "
                                     "them with pair_secrets from the keys of every site of the roster)")
    short = [peer for peer in peers if len(secrets[peer]) != KEY_BYTES]
    if short:
        raise SecureAggregationError(f"expected {KEY_BYTES}-byte pair secrets, got another length for {short} (fix: "
                                     "derive them with pair_secrets)")


def mask_upload(layers: Sequence[np.ndarray], weighting: float, *, site: str, roster: Sequence[str],
                secrets: Mapping[str, bytes], run_id: str, round_number: int) -> list[np.ndarray]:
    """This site's masked upload for one round: float64 layers of integers, to send with weighting 1.0."""
    ordered = _check_roster(roster, site)
    _check_secrets(secrets, ordered, site)
    if not (math.isfinite(weighting) and weighting > 0):
        raise SecureAggregationError(f"expected a finite weighting > 0, got {weighting!r} (fix: weight by the "
                                     "number of records the site trained on)")
    encoding = fixed_point_for(len(ordered))
    parts = []
    for index, layer in enumerate(layers):
        array = np.asarray(layer)
        if array.dtype.kind not in "fiub":
            raise SecureAggregationError(f"expected numeric layers, got dtype {array.dtype} in layer {index} (fix: "
                                         "send the model's parameters as numeric arrays)")
        parts.append(encode(weighting * array.astype(np.float64), encoding,
                            what=f"every weighting × parameter (layer {index})").reshape(-1))
    parts.append(encode(np.array([weighting]), encoding, what="the weighting").reshape(-1))
    values = np.concatenate(parts)
    coefficients = checksum_coefficients(run_id=run_id, round_number=round_number, count=values.size,
                                         mask=encoding.mask)
    upload = np.append(values, checksum(values, coefficients, encoding.mask))
    rank = ordered.index(site)
    for peer_rank, peer in enumerate(ordered):
        if peer == site:
            continue
        mask = pair_mask(secrets[peer], run_id=run_id, round_number=round_number, stream=_MASK_STREAM,
                         count=upload.size, mask=encoding.mask)
        upload = (upload + mask if rank < peer_rank else upload - mask) & encoding.mask  # uint64 wraps modulo 2^64
    return _split(upload.astype(np.float64), [np.shape(layer) for layer in layers])


def _split(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Limb layers of shapes (2, *shape), then the rest of `flat` (the control values) as one last layer."""
    out, start = [], 0
    for shape in shapes:
        size = 2 * math.prod(shape)
        out.append(flat[start:start + size].reshape((2, *shape)))
        start += size
    out.append(flat[start:])
    return out


def _check_layout(mean_layers: Sequence[np.ndarray], shapes: list[tuple[int, ...]]) -> None:
    expected = [(2, *shape) for shape in shapes] + [(_CONTROL_SIZE,)]
    got = [tuple(np.shape(layer)) for layer in mean_layers]
    if got != expected:
        raise SecureAggregationError(f"expected masked layers of shapes {expected}, got {got} (fix: every site must "
                                     "mask the same model with mask_upload)")
    dtypes = sorted({str(np.asarray(layer).dtype) for layer in mean_layers})
    if dtypes != ["float64"]:
        raise SecureAggregationError(f"expected the aggregate in float64, got {', '.join(dtypes)} (fix: upload the "
                                     "masked layers as mask_upload returns them, float64)")


def unmask_aggregate(mean_layers: Sequence[np.ndarray], *, shapes_dtypes: Sequence[tuple[tuple[int, ...], np.dtype]],
                     sites: int, run_id: str, round_number: int) -> tuple[list[np.ndarray], float]:
    """The weighted mean of the sites' layers, in their original dtypes, and the total weighting, from the
    server's mean of every site's `mask_upload`; SecureAggregationError if the masks did not cancel."""
    shapes = [tuple(shape) for shape, _ in shapes_dtypes]
    _check_layout(mean_layers, shapes)
    encoding: FixedPoint = fixed_point_for(sites)
    sums = limb_sums(np.concatenate([np.asarray(layer).reshape(-1) for layer in mean_layers]), encoding)
    values, checksum_sum = sums[:-1], sums[-1]
    coefficients = checksum_coefficients(run_id=run_id, round_number=round_number, count=values.size,
                                         mask=encoding.mask)
    if checksum(values, coefficients, encoding.mask) != checksum_sum:
        raise SecureAggregationError(
            f"expected the aggregate's masked checksum to match its values, got a mismatch in round {round_number}: "
            f"the pairwise masks did not cancel (fix: every one of the {sites} sites must upload in the round, with "
            "pair secrets derived from the same key exchange and run id; restart the run's key exchange)")
    parts = _split(values, shapes)
    total_weighting = float(decode(parts[-1].reshape(2, 1), encoding)[0])
    means = [(decode(limbs, encoding) / total_weighting).astype(dtype)
             for limbs, (_, dtype) in zip(parts[:-1], shapes_dtypes, strict=True)]
    return means, total_weighting
