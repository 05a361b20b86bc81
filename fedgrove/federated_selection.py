"""The last steps of agreeing before round 1: which encoded features the model reads, and whether every site
built the same model.

Why this module exists: selection depends on the task (a likelihood-ratio test of univariate logistic models
for binary and multiclass targets, an F-test for a numeric one), and every site must build a model with the
same layers in the same shapes, or FedAvg would average unlike things. Both are conversations through the
server (`fedgrove.exchanges`), driven like the rest of preprocessing.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence

import numpy as np

from fedgrove.documents import document_fields, read_documents
from fedgrove.encoding import Preprocessing
from fedgrove.exchanges import Exchange, Exchanges
from fedgrove.f_test import f_ranking, f_test_sums
from fedgrove.model import ModelBuildError, build_model, outputs_for, signature
from fedgrove.multinomial import multinomial_fit, multinomial_ranking
from fedgrove.newton import lrt_ranking, newton_fit
from fedgrove.schema import FederationRefused
from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec

Conversation = Generator[Exchange, Mapping[str, np.ndarray], Preprocessing]


def select_features(
    conversation: Exchanges, spec: FederationSpec, preprocessing: Preprocessing, table: SiteTable, *, records: int
) -> Conversation:
    """The `spec.select.k` encoded features that explain the target best, by the task's univariate test."""
    assert spec.select is not None
    available = len(preprocessing.encoded)
    if spec.select.k > available:
        raise FederationRefused(f"the sites cannot federate: select.k is {spec.select.k} but the sites' columns encode "
                                f"to {available} features (fix: choose k <= {available})")
    X = preprocessing.prepare(table.train, all_encoded=True)
    y = preprocessing.targets(table.train[preprocessing.target]).astype(np.float64)
    if spec.task == "regression":
        pooled = yield from conversation.exchange("f-test", f_test_sums(X, y))
        order, p_values = f_ranking(pooled, k=spec.select.k)
    else:
        fit = newton_fit(X, y, records=records) if spec.task == "binary" else \
            multinomial_fit(X, y, classes=len(preprocessing.labels), records=records)
        sums, iteration = next(fit), 0
        while True:
            iteration += 1
            pooled = yield from conversation.exchange(f"newton-{iteration}", sums)
            try:
                sums = fit.send(pooled)
            except StopIteration as finished:
                result = finished.value
                break
        ranking = lrt_ranking if spec.task == "binary" else multinomial_ranking
        order, p_values = ranking(result, k=spec.select.k)
    return preprocessing.with_selection([preprocessing.encoded[j].name for j in order], p_values)


def agree_model(
    conversation: Exchanges, spec: FederationSpec, preprocessing: Preprocessing, *, roster: Sequence[str], site: str
) -> Generator[Exchange, Mapping[str, np.ndarray], None]:
    """Every site builds the spec's model; they compare the layers' names, shapes and dtypes."""
    n_inputs = len(preprocessing.input_names)
    n_outputs = outputs_for(spec.task, len(preprocessing.labels))
    try:
        model = build_model(n_inputs, n_outputs, seed=spec.train.seed, spec=spec.model)
        if spec.privacy.dp is not None and spec.privacy.dp.level == "record":
            from fedgrove.dp_sgd import validate_for_dp_sgd  # imports Opacus: only for record-level DP

            model.train()
            validate_for_dp_sgd(model)
        document: dict = {"layers": signature(model)}
    except (ModelBuildError, ValueError) as exc:
        document = {"error": str(exc)}
    pooled = yield from conversation.exchange("model", document_fields(document, roster=roster, site=site))
    documents = read_documents(pooled, roster=roster)
    problems = [f"site {name}: {doc['error']}" for name, doc in documents.items() if "error" in doc]
    if problems:
        raise FederationRefused("the sites cannot federate: " + "; ".join(problems))
    reference_site = roster[0]
    reference = [tuple(entry) for entry in documents[reference_site]["layers"]]
    for name in roster[1:]:
        layers = [tuple(entry) for entry in documents[name]["layers"]]
        if layers != reference:
            raise FederationRefused("the sites cannot federate: " + _first_difference(name, layers, reference_site,
                                                                                       reference))


def _first_difference(site: str, layers: list[tuple], reference_site: str, reference: list[tuple]) -> str:
    fix = "(fix: give every site the same builder, options and package version)"
    for (name, shape, dtype), (ref_name, ref_shape, ref_dtype) in zip(layers, reference, strict=False):
        if name != ref_name:
            return f"site {site}'s model has layer {name!r} where site {reference_site}'s has {ref_name!r} {fix}"
        if (shape, dtype) != (ref_shape, ref_dtype):
            return (f"site {site}'s model has layer {name!r} of shape {tuple(shape)} {dtype} where site "
                    f"{reference_site}'s has {tuple(ref_shape)} {ref_dtype} {fix}")
    return (f"site {site}'s model has {len(layers)} layers where site {reference_site}'s has {len(reference)} "
            f"{fix}")
