"""One conversation of exchanges between sites through the server: numbered, tagged and checked.

Why this module exists: every protocol the sites run together (preprocessing, selection, the model check)
is a generator that yields `(step name, fields)` and receives the server's combination. Each exchange carries a
tag (`exchange_step_sum` = the step's number, `exchange_sites_sum` = 1): the combined tag must be the step's
number times the number of sites, so a late retry of an earlier upload that the server counted in a later
exchange stops every site instead of corrupting the result.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

import numpy as np

from fedgrove.schema import FederationRefused

Fields = dict[str, np.ndarray]
Exchange = tuple[str, Fields]

STEP_FIELD = "exchange_step_sum"
SITES_FIELD = "exchange_sites_sum"


def _tagged(fields: Fields, *, step: int) -> Fields:
    return {**fields, STEP_FIELD: np.array([step], dtype=np.int64), SITES_FIELD: np.array([1], dtype=np.int64)}


def _check_tag(pooled: Mapping[str, np.ndarray], *, step: int, sites: int, name: str) -> None:
    got_step, got_sites = int(pooled[STEP_FIELD][0]), int(pooled[SITES_FIELD][0])
    if (got_step, got_sites) != (step * sites, sites):
        raise FederationRefused(
            f"the sites cannot federate: exchange {name!r} combined {got_sites} contributions tagged {got_step}, "
            f"expected {sites} tagged {step * sites}: a late retry of an earlier upload was counted in it (fix: "
            "run again; each run uses a fresh branch)"
        )


class Exchanges:
    """Numbers the exchanges of one conversation and checks each one's tag."""

    def __init__(self, sites: int) -> None:
        self.sites = sites
        self.step = 0

    def exchange(self, name: str, fields: Fields) -> Generator[Exchange, Mapping[str, np.ndarray],
                                                                Mapping[str, np.ndarray]]:
        self.step += 1
        pooled = yield name, _tagged(fields, step=self.step)
        _check_tag(pooled, step=self.step, sites=self.sites, name=name)
        return pooled
