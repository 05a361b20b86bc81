"""Federated preprocessing: what every site sends, and what every site derives, before round 1.

Why this module exists: sites agree on everything that shapes the model's inputs from descriptions,
counts and sums only. The protocol is written once, as a generator that yields each exchange's fields and
receives the server's combination: a leaf drives it through the aggregation server (`tasks/preprocessing.py`),
the in-memory simulation drives every site's generator in lockstep with a plain sum. The exchanges:

1. `schema`: each site's profile (columns, cell counts, labels) as a document; every site runs
   `agree_schema` on all of them and stops, with the same message, if they do not fit.
2. `moments`: per numeric column the count and sum of present values; per categorical column its
   missing-cell count and a bucket sketch of its category counts (`fedgrove.category_sketch`).
3. `spread`: per numeric column the sum of squared deviations from the pooled mean (two passes: exact
   where sumsq - n mean^2 cancels); each site's frequent-category candidates as a document.
4. `categories` (only with categorical columns): exact counts of the candidate categories.
5. with `select`: `newton-<i>` (the likelihood-ratio selection of a binary or multiclass target) or `f-test`
   (a numeric target) (`fedgrove.federated_selection`).
6. `model`: every site builds the spec's model and the sites compare its layers.
7. `privacy` (only with `privacy` in the spec): public keys for secure aggregation and the rounds each site's
   DP budget allows (`fedgrove.privacy`).

Every exchange is numbered and tagged (`fedgrove.exchanges`). A regression target is standardised with its
pooled mean and standard deviation, summed beside the numeric columns'.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedgrove.category_sketch import BUCKETS, exact_counts, frequent_candidates, sketch, sketch_key, value_counts
from fedgrove.documents import document_fields, read_documents
from fedgrove.encoding import MISSING, OTHER, CategoricalLevels, EncodedColumn, Preprocessing, numeric_values
from fedgrove.exchanges import Exchange, Exchanges
from fedgrove.federated_selection import agree_model, select_features
from fedgrove.privacy import PrivacyPlan, agree_privacy
from fedgrove.schema import AgreedSchema, FederationRefused, SiteProfile, agree_schema, profile_site, refusal_profile
from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec
from fedgrove.values import category_strings

Protocol = Generator[Exchange, Mapping[str, np.ndarray], "AgreedPreprocessing"]

_VARIANCE_FLOOR = 1e-12  # relative to the mean square: below it a column is constant up to rounding


@dataclass(frozen=True)
class AgreedPreprocessing:
    """The outcome every site reaches: the preprocessing, and every site's profile (counts only)."""

    preprocessing: Preprocessing
    profiles: dict[str, SiteProfile]
    exchanges: int
    privacy: PrivacyPlan


def preprocessing_protocol(
    *, spec: FederationSpec, site: str, table: SiteTable | None, error: str | None = None, run_id: str = "run"
) -> Protocol:
    """One site's side of federated preprocessing. `error` (with `table` None): the site cannot take part;
    it still sends its profile so every site stops at once with the same message."""
    roster = spec.roster()
    conversation = Exchanges(len(roster))
    exchange = conversation.exchange
    if table is None:
        profile = refusal_profile(site=site, spec=spec, error=error or "cannot take part")
    else:
        profile = profile_site(table, spec=spec)
    pooled = yield from exchange("schema", document_fields(profile.model_dump(mode="json"), roster=roster, site=site))
    profiles = {name: SiteProfile.model_validate(doc) for name, doc in read_documents(pooled, roster=roster).items()}
    schema = agree_schema(spec, list(profiles.values()))
    assert table is not None  # a site without a table made agree_schema refuse
    local = _LocalColumns(table.train, schema)
    key = sketch_key(spec.fingerprint())
    numeric, categorical = schema.of_kind("numeric"), schema.of_kind("categorical")

    target = numeric_values(table.train[spec.target], spec.target) if spec.task == "regression" \
        else np.zeros(0)
    pooled = yield from exchange("moments", {
        "numeric_present_sum": local.present,
        "numeric_total_sum": local.totals,
        "category_missing_sum": local.category_missing,
        "category_buckets_sum": np.stack([sketch(local.counts[c], key=key) for c in categorical])
        if categorical else np.zeros((0, BUCKETS), dtype=np.int64),
        "training_records_sum": np.array([len(table.train)], dtype=np.int64),
        "target_total_sum": np.array([float(target.sum())]),
    })
    records = int(pooled["training_records_sum"][0])
    present = pooled["numeric_present_sum"]
    empty = [name for name, count in zip(numeric, present, strict=True) if count == 0]
    if empty:
        raise FederationRefused(f"the sites cannot federate: numeric column{'s' if len(empty) > 1 else ''} "
                                f"{', '.join(repr(c) for c in empty)} {'are' if len(empty) > 1 else 'is'} empty in "
                                "every site's training records (fix: list it under exclude)")
    means = pooled["numeric_total_sum"] / present
    target_mean = float(pooled["target_total_sum"][0]) / records
    category_missing = pooled["category_missing_sum"]
    buckets = pooled["category_buckets_sum"]

    own_candidates = {
        column: frequent_candidates(local.counts[column], buckets[i], threshold=spec.min_category_count, key=key)
        for i, column in enumerate(categorical)
    }
    pooled = yield from exchange("spread", {
        "numeric_squares_sum": local.centred_squares(means),
        "target_squares_sum": np.array([float(np.square(target - target_mean).sum())]),
        **document_fields(own_candidates, roster=roster, site=site),
    })
    variances = pooled["numeric_squares_sum"] / records
    target_std = float(np.sqrt(float(pooled["target_squares_sum"][0]) / records))
    if spec.task == "regression" and not target_std > 0:
        raise FederationRefused(f"the sites cannot federate: target {spec.target!r} has the same value in every "
                                "training record (fix: choose a target that varies)")
    candidates = {column: sorted({c for doc in read_documents(pooled, roster=roster).values() for c in doc[column]})
                  for column in categorical}

    category_counts: dict[str, np.ndarray] = {}
    if categorical:
        pooled = yield from exchange("categories", {
            "category_counts_sum": np.concatenate(
                [exact_counts(local.counts[column], candidates[column]) for column in categorical]),
        })
        counts = pooled["category_counts_sum"]
        offset = 0
        for column in categorical:
            category_counts[column] = counts[offset: offset + len(candidates[column])]
            offset += len(candidates[column])

    preprocessing = _preprocessing(
        spec, schema, records=records, means=means, variances=variances, candidates=candidates,
        category_counts=category_counts, category_missing=category_missing,
    )
    if spec.task == "regression":
        preprocessing = preprocessing.model_copy(update={"target_mean": target_mean, "target_std": target_std})
    if spec.select is not None:
        preprocessing = yield from select_features(conversation, spec, preprocessing, table, records=records)
    yield from agree_model(conversation, spec, preprocessing, roster=roster, site=site)
    privacy = yield from agree_privacy(conversation, spec, site=site, run_id=run_id, records=len(table.train))
    return AgreedPreprocessing(preprocessing=preprocessing, profiles=profiles, exchanges=conversation.step,
                               privacy=privacy)


class _LocalColumns:
    """This site's training records, read once per agreed column."""

    def __init__(self, train: pd.DataFrame, schema: AgreedSchema) -> None:
        self.numeric = {c: numeric_values(train[c], c) for c in schema.of_kind("numeric")}
        categorical = schema.of_kind("categorical")
        self.counts = {c: value_counts(category_strings(train[c])) for c in categorical}
        self.present = np.array([int((~np.isnan(v)).sum()) for v in self.numeric.values()], dtype=np.int64)
        self.totals = np.array([float(np.nansum(v)) for v in self.numeric.values()], dtype=np.float64)
        self.category_missing = np.array([int(train[c].isna().sum()) for c in categorical], dtype=np.int64)

    def centred_squares(self, means: np.ndarray) -> np.ndarray:
        return np.array([float(np.nansum(np.square(v - m))) for v, m in zip(self.numeric.values(), means,
                                                                            strict=True)], dtype=np.float64)


def _preprocessing(
    spec: FederationSpec,
    schema: AgreedSchema,
    *,
    records: int,
    means: np.ndarray,
    variances: np.ndarray,
    candidates: Mapping[str, Sequence[str]],
    category_counts: Mapping[str, np.ndarray],
    category_missing: np.ndarray,
) -> Preprocessing:
    numeric = schema.of_kind("numeric")
    categorical = schema.of_kind("categorical")
    numeric_stats = {name: (float(m), float(v)) for name, m, v in zip(numeric, means, variances, strict=True)}
    encoded: list[EncodedColumn] = []
    dropped: list[str] = []
    levels: list[CategoricalLevels] = []
    categorical_index = {name: i for i, name in enumerate(categorical)}
    for name in schema.columns:
        if name in numeric_stats:
            mean, variance = numeric_stats[name]
            if not variance > _VARIANCE_FLOOR * max(mean * mean, 1e-300):
                dropped.append(name)
                continue
            encoded.append(EncodedColumn(name=name, column=name, mean=mean, std=float(np.sqrt(variance))))
            continue
        i = categorical_index[name]
        counts = category_counts[name]
        kept = [c for c, n in zip(candidates[name], counts, strict=True) if n >= spec.min_category_count]
        kept_total = int(sum(n for n in counts if n >= spec.min_category_count))
        missing = int(category_missing[i])
        other = records - missing - kept_total
        column_levels = [(c, int(n)) for c, n in zip(candidates[name], counts, strict=True)
                         if n >= spec.min_category_count]
        if other:
            column_levels.append((OTHER, other))
        if missing:
            column_levels.append((MISSING, missing))
        levels.append(CategoricalLevels(column=name, levels=kept, other=bool(other), missing=bool(missing)))
        for level, count in column_levels:
            share = count / records
            label = f"{name}={level}"
            if count in (0, records):
                dropped.append(label)
                continue
            encoded.append(EncodedColumn(name=label, column=name, level=level, mean=share,
                                         std=float(np.sqrt(share * (1.0 - share)))))
    if not encoded:
        raise FederationRefused("the sites cannot federate: every feature column is constant over the sites' training "
                                "records (fix: add informative columns)")
    return Preprocessing(
        task=spec.task,
        target=schema.target,
        labels=schema.labels,
        numeric={name: stats[0] for name, stats in numeric_stats.items()},
        categorical=levels,
        encoded=encoded,
        dropped_constant=dropped,
        training_records=records,
    )
