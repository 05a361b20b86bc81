"""The model registry: an index of every finished run in the artifact store, with `latest` and `production`
pointers, changed only by compare-and-swap so that concurrent runs cannot overwrite each other's promotion.

Why this module exists: a weekly retrain needs to find back which run's model is in use, with which code, spec
and metrics, and must not let a worse model replace a better one. The index is one JSON document,
`<artifacts>/registry/index.json` (`fedgrove.registry_store`); each run adds its entry (`RunEntry`, built by
`fedgrove.registry_entry`) and moves `latest`; a promotion moves `production` only if production is still the
run the decision was made against (`fedgrove.promotion` holds the rule). Otherwise the promotion's outcome is
"production moved", and production stays.

    RegistryError          anything the registry refuses
    ├── RegistryCorrupt    an index that is not JSON, or not a registry index
    ├── RegistryTooNew     an index written by a newer format version than this fedgrove reads
    ├── RunNotRegistered   a run id that is not in the index
    └── PromotionRefused   promoting a run that failed
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedgrove.promotion import decide
from fedgrove.registry_store import IndexStore
from fedgrove.spec import PromotionSpec

FORMAT = 1
MAX_ATTEMPTS = 20  # compare-and-swap retries; a registration commutes, a promotion re-checks production


class RegistryError(RuntimeError):
    pass


class RegistryCorrupt(RegistryError):
    pass


class RegistryTooNew(RegistryError):
    pass


class RunNotRegistered(RegistryError):
    pass


class PromotionRefused(RegistryError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteCounts(Strict):
    records: int
    test_records: int


class RoundMetricsEntry(Strict):
    round: int
    metrics: dict[str, float | None]  # pooled test metrics, `<name>_test`


class RunEntry(Strict):
    """One run in the registry."""

    run_id: str
    registered_at: datetime
    status: Literal["completed", "failed"]
    failure: str | None = None  # why it failed: the sites that did not finish
    task: str
    spec_hash: str  # SHA-256 of the shared spec's canonical JSON
    code_version: str  # "git <commit>" of the checkout, else "fedgrove <version>"
    sites: dict[str, SiteCounts]
    rounds_run: int
    final: RoundMetricsEntry
    best: RoundMetricsEntry  # the round with the lowest pooled test loss
    final_model: str | None
    best_model: str | None  # model.pt when the best round is the last, else best-model.pt; None if not kept
    summary: str | None = None


class PointerMove(Strict):
    pointer: Literal["production"]
    run_id: str
    previous: str | None
    at: datetime
    reason: str


class RegistryIndex(Strict):
    format: int = FORMAT
    revision: str = ""  # a fresh id per write: two writes never produce the same bytes
    runs: dict[str, RunEntry] = Field(default_factory=dict)
    latest: str | None = None
    production: str | None = None
    history: list[PointerMove] = Field(default_factory=list)


@dataclass(frozen=True)
class PromotionOutcome:
    status: Literal["promoted", "kept", "production_moved", "not_auto", "refused"]
    run_id: str
    production: str | None  # the production run after this call
    message: str

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def parse_index(data: bytes, *, location: str) -> RegistryIndex:
    """The index in `data`; RegistryCorrupt or RegistryTooNew with the fix."""
    fix = (f"(fix: restore {location} from a backup, or move it aside to start a new registry; every run's "
           "outputs stay in its own folder)")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryCorrupt(f"registry index {location} is not valid JSON ({exc}) {fix}") from None
    version = document.get("format") if isinstance(document, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise RegistryCorrupt(f"registry index {location} has no integer `format` key, got "
                              f"{type(document).__name__ if not isinstance(document, dict) else repr(version)} "
                              f"{fix}")
    if version > FORMAT:
        raise RegistryTooNew(f"registry index {location} was written by registry format {version}, and this "
                             f"fedgrove reads format {FORMAT} at most (fix: upgrade fedgrove to the version that "
                             "wrote it)")
    try:
        return RegistryIndex.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RegistryCorrupt(f"registry index {location} is not a registry index: {where}: {first['msg']} "
                              f"{fix}") from None


def _serialise(index: RegistryIndex) -> bytes:
    fresh = index.model_copy(update={"format": FORMAT, "revision": uuid.uuid4().hex})
    return (json.dumps(fresh.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


class Registry:
    def __init__(self, store: IndexStore) -> None:
        self.store = store

    @property
    def location(self) -> str:
        return self.store.location

    def _read(self) -> tuple[RegistryIndex, str | None]:
        stored = self.store.read()
        if stored.data is None:
            return RegistryIndex(), None
        return parse_index(stored.data, location=self.location), stored.version

    def index(self) -> RegistryIndex:
        return self._read()[0]

    def runs(self) -> list[RunEntry]:
        """Every registered run, oldest first."""
        return sorted(self.index().runs.values(), key=lambda entry: (entry.registered_at, entry.run_id))

    def entry(self, run_id: str) -> RunEntry:
        return entry_of(self.index(), run_id, location=self.location)

    def register(self, entry: RunEntry) -> RegistryIndex:
        """Add (or replace) the run's entry; a completed run becomes `latest`."""
        for _ in range(MAX_ATTEMPTS):
            index, version = self._read()
            updated = index.model_copy(update={
                "runs": {**index.runs, entry.run_id: entry},
                "latest": entry.run_id if entry.status == "completed" else index.latest,
            })
            if self.store.replace_if(_serialise(updated), expected=version):
                return updated
        raise RegistryError(f"registry index {self.location} changed {MAX_ATTEMPTS} times while run "
                            f"{entry.run_id} was being registered (fix: retry the registration)")

    def promote(self, run_id: str, *, expected_production: str | None, reason: str) -> PromotionOutcome:
        """Make `run_id` production, if production is still `expected_production` (compare-and-swap)."""
        for _ in range(MAX_ATTEMPTS):
            index, version = self._read()
            entry = entry_of(index, run_id, location=self.location)
            refuse_failed(entry)
            if index.production != expected_production:
                return PromotionOutcome("production_moved", run_id, index.production, production_moved(
                    run_id, expected=expected_production, now=index.production))
            move = PointerMove(pointer="production", run_id=run_id, previous=index.production,
                               at=datetime.now(UTC), reason=reason)
            updated = index.model_copy(update={"production": run_id, "history": [*index.history, move]})
            if self.store.replace_if(_serialise(updated), expected=version):
                return PromotionOutcome("promoted", run_id, run_id, f"run {run_id} is now production: {reason}")
            # the index changed under us: a registration (retry) or another promotion (the check above says)
        raise RegistryError(f"registry index {self.location} changed {MAX_ATTEMPTS} times while run {run_id} was "
                            "being promoted (fix: retry `fedgrove models promote`)")

    def promote_if_better(self, run_id: str, rule: PromotionSpec) -> PromotionOutcome:
        """Apply the safe-promotion rule (`fedgrove.promotion`) to a registered run."""
        index = self.index()
        entry = entry_of(index, run_id, location=self.location)
        if entry.status != "completed":
            return PromotionOutcome("refused", run_id, index.production, refusal(entry))
        if not rule.auto:
            return PromotionOutcome("not_auto", run_id, index.production, f"run {run_id} was registered and not "
                                    f"promoted: promotion.auto is false (fix: `fedgrove models promote {run_id}`)")
        current = index.runs.get(index.production) if index.production is not None else None
        decision = decide(task=entry.task, candidate=entry.final.metrics,
                          production=current.final.metrics if current is not None else None,
                          production_run=index.production, max_regression=rule.max_regression)
        if not decision.promote:
            return PromotionOutcome("kept", run_id, index.production,
                                    f"run {run_id} was not promoted, production stays on run {index.production}: "
                                    f"{decision.reason}")
        return self.promote(run_id, expected_production=index.production, reason=decision.reason)


POINTERS = ("latest", "production")


def resolve_run(index: RegistryIndex, name: str, *, location: str) -> str:
    """A run id, or the run a pointer (`latest`, `production`) names; a pointer that names none is refused."""
    if name not in POINTERS:
        return name
    target = index.latest if name == "latest" else index.production
    if target is None:
        raise RunNotRegistered(f"the registry at {location} has no {name} run yet (fix: `fedgrove models list` "
                               "shows the registered runs; pass one's id)")
    return target


def entry_of(index: RegistryIndex, run_id: str, *, location: str) -> RunEntry:
    try:
        return index.runs[run_id]
    except KeyError:
        raise RunNotRegistered(f"run {run_id!r} is not in the registry at {location} (fix: `fedgrove models "
                               "list` shows the registered runs)") from None


def refusal(entry: RunEntry) -> str:
    return (f"run {entry.run_id} failed ({entry.failure}), so it cannot be promoted to production (fix: promote a "
            "completed run; `fedgrove models list` shows each run's status)")


def refuse_failed(entry: RunEntry) -> None:
    if entry.status != "completed":
        raise PromotionRefused(refusal(entry))


def production_moved(run_id: str, *, expected: str | None, now: str | None) -> str:
    return (f"production moved: it was run {expected} when run {run_id}'s promotion was decided and is now run "
            f"{now}, so run {run_id} was not promoted (fix: compare them with `fedgrove models show`, then "
            f"`fedgrove models promote {run_id}` if it should win)")
