"""What a site does for privacy each round, decided before round 1: how many rounds the DP budget allows,
the pair secrets of secure aggregation, the noise of site-level DP.

Why this module exists: privacy touches every round (the update a site sends, how it reads the aggregate,
the ε it reports), but is settled once: the sites exchange their public keys and their DP budgets in one
document exchange (`agree_privacy`), so every site runs the same number of rounds and can mask its uploads.
The private key and the pair secrets never leave the site's process: they live in the `PrivacyPlan`, which
is never a task result, a parameter or an artifact.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedgrove.documents import document_fields, read_documents
from fedgrove.dp_accounting import epsilon, record_sample_rate, rounds_within_budget
from fedgrove.dp_noise import clip_update, gaussian_noise, noise_std
from fedgrove.exchanges import Exchange, Exchanges
from fedgrove.schema import FederationRefused
from fedgrove.secure_aggregation import make_keys, mask_upload, pair_secrets, public_key_document, \
    read_public_keys, unmask_aggregate
from fedgrove.spec import DpSpec, FederationSpec


@dataclass(frozen=True)
class SecureRound:
    """What masking an upload needs: the roster, this site's pair secrets, the run."""

    site: str
    roster: list[str]
    secrets: dict[str, bytes] = field(repr=False)
    run_id: str

    def mask(self, layers: Sequence[np.ndarray], weighting: float, round_number: int) -> list[np.ndarray]:
        return mask_upload(layers, weighting, site=self.site, roster=self.roster, secrets=self.secrets,
                           run_id=self.run_id, round_number=round_number)

    def unmask(self, mean_layers: Sequence[np.ndarray], template: Sequence[np.ndarray],
               round_number: int) -> list[np.ndarray]:
        layers, _total = unmask_aggregate(mean_layers, shapes_dtypes=[(t.shape, t.dtype) for t in template],
                                          sites=len(self.roster), run_id=self.run_id, round_number=round_number)
        return layers


@dataclass(frozen=True)
class PrivacyPlan:
    rounds: int  # what the run trains: the spec's rounds, or fewer where the DP budget ends first
    secure: SecureRound | None = None
    dp: DpSpec | None = None
    sites: int = 1
    epsilons: list[float] = field(default_factory=list)  # ε at the plan's delta after each round (this site's)
    stop_message: str | None = None

    @property
    def site_noise_std(self) -> float | None:
        if self.dp is None or self.dp.level != "site":
            return None
        return noise_std(self.dp.noise_multiplier, self.dp.clip_norm, sites=self.sites,
                         secure_aggregation=self.secure is not None)


def no_privacy(spec: FederationSpec) -> PrivacyPlan:
    return PrivacyPlan(rounds=spec.train.rounds)


def site_epsilons(dp: DpSpec, *, rounds: int, records: int, batch_size: int, local_epochs: int) -> list[float]:
    """ε after each of `rounds` rounds, from Opacus's RDP accountant: site level samples every site every round
    (one step a round); record level samples batch_size / records per step, batches per epoch steps a round."""
    if dp.level == "site":
        rate, steps = 1.0, 1
    else:
        rate, steps = record_sample_rate(min(batch_size, records), records), \
            local_epochs * math.ceil(records / min(batch_size, records))
    return [epsilon(dp.noise_multiplier, rate, steps * r, dp.delta) for r in range(1, rounds + 1)]


def affordable_rounds(dp: DpSpec, *, rounds: int, records: int, batch_size: int, local_epochs: int) -> int:
    if dp.target_epsilon is None:
        return rounds
    if dp.level == "site":
        rate, steps = 1.0, 1
    else:
        rate, steps = record_sample_rate(min(batch_size, records), records), \
            local_epochs * math.ceil(records / min(batch_size, records))
    return rounds_within_budget(dp.noise_multiplier, rate, dp.delta, dp.target_epsilon, steps_per_round=steps,
                                max_rounds=rounds)


def agree_privacy(
    conversation: Exchanges, spec: FederationSpec, *, site: str, run_id: str, records: int
) -> Generator[Exchange, Mapping[str, np.ndarray], PrivacyPlan]:
    """One exchange: each site's public key (secure aggregation) and the rounds its DP budget allows. Every
    site trains the fewest rounds any site can afford; a site that cannot afford one stops every site."""
    privacy, roster = spec.privacy, spec.roster()
    if not privacy.secure_aggregation and privacy.dp is None:
        return no_privacy(spec)
    dp = privacy.dp
    keys = make_keys(site) if privacy.secure_aggregation else None
    allowed = spec.train.rounds if dp is None else affordable_rounds(
        dp, rounds=spec.train.rounds, records=records, batch_size=spec.train.batch_size,
        local_epochs=spec.train.local_epochs)
    document: dict = {"rounds": allowed, **(public_key_document(keys) if keys is not None else {})}
    pooled = yield from conversation.exchange("privacy", document_fields(document, roster=roster, site=site))
    documents = read_documents(pooled, roster=roster)
    secure = None
    if keys is not None:
        public_keys = read_public_keys(documents, roster)
        secure = SecureRound(site=site, roster=list(roster), secrets=pair_secrets(keys, public_keys, run_id=run_id),
                             run_id=run_id)
    rounds = min(int(doc["rounds"]) for doc in documents.values())
    epsilons = [] if dp is None else site_epsilons(dp, rounds=max(rounds, 1), records=records,
                                                  batch_size=spec.train.batch_size,
                                                  local_epochs=spec.train.local_epochs)
    if rounds == 0:
        short = sorted(name for name, doc in documents.items() if int(doc["rounds"]) == 0)
        assert dp is not None
        raise FederationRefused(
            f"the sites cannot federate: dp.target_epsilon {dp.target_epsilon:g} is already exceeded after one round "
            f"at {'site' if len(short) == 1 else 'sites'} {', '.join(short)} (ε = {epsilons[0]:.3g} at δ = "
            f"{dp.delta:g} here) (fix: raise dp.noise_multiplier or dp.target_epsilon)")
    message = None
    if rounds < spec.train.rounds:
        assert dp is not None
        message = (f"stopped after {rounds} of {spec.train.rounds} rounds: one more would have pushed ε past "
                   f"dp.target_epsilon {dp.target_epsilon:g} (δ = {dp.delta:g})")
    return PrivacyPlan(rounds=rounds, secure=secure, dp=dp, sites=len(roster), epsilons=epsilons[:rounds],
                       stop_message=message)


def privatise_update(
    global_parameters: Sequence[np.ndarray], local: Sequence[np.ndarray], *, plan: PrivacyPlan,
    generator: np.random.Generator,
) -> list[np.ndarray]:
    """Site-level DP: the update (local - global) clipped to dp.clip_norm, plus Gaussian noise, added back."""
    std = plan.site_noise_std
    if std is None:
        return list(local)
    assert plan.dp is not None
    update = [np.asarray(l, dtype=np.float64) - np.asarray(g, dtype=np.float64)
              for l, g in zip(local, global_parameters, strict=True)]
    clipped, _norm = clip_update(update, plan.dp.clip_norm)
    noise = gaussian_noise([u.shape for u in clipped], std, generator)
    return [(np.asarray(g, dtype=np.float64) + u + n).astype(np.asarray(l).dtype)
            for g, u, n, l in zip(global_parameters, clipped, noise, local, strict=True)]
