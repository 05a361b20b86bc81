"""One interface over the two running aggregates, so that no caller asks which one it holds.

A `federated_learning` archive is folded into a `WeightedSum` (FedAvg), a `federated_analytics` archive into a
`FieldCombiner` (field by field). Both are pure arithmetic with errors of their own; here they take a whole
`ParsedArchive` and answer with the server's errors: a contribution that does not fit the aggregation is a
`Conflict` (409), one that cannot be added at all a `BadRequest` (400).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from aggregator.analytics import FieldCombiner, FieldMismatch, FieldOverflow, UnconfiguredField
from aggregator.archive import ParsedArchive
from aggregator.db import Branch
from aggregator.errors import BadRequest, Conflict
from aggregator.layer_checks import declared_layers, describe_mismatch, describe_undeclared, specs_of
from fedgrove_common.fedavg import SumOverflow, WeightedSum
from fedgrove_common.protocol import FEDERATED_ANALYTICS, PAYLOAD_KIND_KEY, layer_entries


class Accumulator(Protocol):
    kind: str  # the payload kind it takes

    def check(self, archive: ParsedArchive) -> None:
        """Conflict or BadRequest if `archive` cannot be added; changes nothing."""

    def add(self, archive: ParsedArchive) -> None:
        """Fold `archive` in (it has passed `check`)."""

    def remove(self, archive: ParsedArchive) -> bool:
        """Take an archive `add` took back out; False, changing nothing, when that cannot be done exactly
        enough: the caller then folds the remaining archives into a new accumulator."""

    def entries(self) -> dict[str, np.ndarray]:
        """The aggregate's archive entries."""

    @property
    def weight_total(self) -> float:
        """The sum of the weightings folded in (0 for analytics, whose archives carry none)."""


def new_accumulator(archive: ParsedArchive, branch: Branch) -> Accumulator:
    """An empty accumulator shaped after `archive`, the first contribution of an aggregation."""
    if archive.kind == FEDERATED_ANALYTICS:
        return FieldAccumulator(archive, branch)
    return LayerAccumulator(archive, branch)


def _check_kind(kind: str, archive: ParsedArchive) -> None:
    if archive.kind != kind:
        raise Conflict(f"archive is {archive.kind}; the open aggregation is {kind}")


class LayerAccumulator:
    """FedAvg of `layer_<n>` arrays, weighted by each archive's weighting, shaped as the branch declares
    (`layer_checks`) or, where it declares nothing, as the aggregation's first archive."""

    def __init__(self, template: ParsedArchive, branch: Branch) -> None:
        self.kind = template.kind
        self._declared = declared_layers(branch.model_config_json or {})
        self._check_declared(template)
        self._specs = specs_of(template.layers)
        self._sum = WeightedSum(template.layers)

    def _check_declared(self, archive: ParsedArchive) -> None:
        problem = None if self._declared is None else describe_undeclared(self._declared, archive.layers)
        if problem:
            raise Conflict(problem)

    def check(self, archive: ParsedArchive) -> None:
        _check_kind(self.kind, archive)
        self._check_declared(archive)
        problem = describe_mismatch(self._specs, archive.layers)
        if problem:
            raise Conflict(problem)
        try:
            self._sum.check(archive.layers, archive.weighting, magnitude=archive.magnitude)
        except SumOverflow as exc:
            raise BadRequest(str(exc)) from exc

    def add(self, archive: ParsedArchive) -> None:
        self._sum.add(archive.layers, archive.weighting, magnitude=archive.magnitude)

    def remove(self, archive: ParsedArchive) -> bool:
        return self._sum.remove(archive.layers, archive.weighting, magnitude=archive.magnitude)

    def entries(self) -> dict[str, np.ndarray]:
        return layer_entries(self._sum.mean())

    @property
    def weight_total(self) -> float:
        return self._sum.total_weight


class FieldAccumulator:
    """Analytics fields combined by their bundle suffix or the branch's configured operation."""

    def __init__(self, template: ParsedArchive, branch: Branch) -> None:
        self.kind = template.kind
        try:
            self._combiner = FieldCombiner(
                template.fields, configured=branch.analytics_ops or {}, default=branch.analytics_default_op
            )
        except (UnconfiguredField, FieldMismatch) as exc:
            raise BadRequest(str(exc)) from exc

    def check(self, archive: ParsedArchive) -> None:
        _check_kind(self.kind, archive)
        try:
            self._combiner.check(archive.fields)
        except FieldMismatch as exc:
            raise Conflict(str(exc)) from exc
        except FieldOverflow as exc:
            raise BadRequest(str(exc)) from exc

    def add(self, archive: ParsedArchive) -> None:
        self._combiner.add(archive.fields)

    def remove(self, archive: ParsedArchive) -> bool:
        return False  # a min or a max cannot be taken back: analytics archives (small) are folded in again

    def entries(self) -> dict[str, np.ndarray]:
        return {**self._combiner.result(), PAYLOAD_KIND_KEY: np.array(FEDERATED_ANALYTICS)}

    @property
    def weight_total(self) -> float:
        return 0.0
