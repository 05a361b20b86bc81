"""The federation spec: one typed object that says what a federation trains, read from a short YAML file.

Why this module exists: a consortium describes its federation once (the task, the label column, which
columns are features and which are categorical, the model, the training and evaluation settings) and runs
that same description on one machine (`fedgrove train --spec`) and at real sites (each organisation's
worker). The spec is the coordinator flow's parameter, so the Prefect UI shows it as a form and
`prefect deployment run --param spec=...` accepts it as JSON. Every model here forbids unknown keys: a typo
(`targte: outcome`) fails at once instead of training on defaults.

What a site reads is not in the shared part of the spec. `sites` maps each site's name to its data source
for the one-machine mode only; in sites mode each organisation sets its own source on its own worker, and
the coordinator sends the site names alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedgrove.sources import DataSource, SourceError, is_block_source

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SpecModel(BaseModel):
    """Base of every spec object: unknown keys are errors, and values are immutable once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Selection(SpecModel):
    """Federated likelihood-ratio selection of the `k` most significant encoded features."""

    k: int = Field(ge=1, description="how many encoded features to keep")


Task = Literal["binary", "multiclass", "regression"]
BUILDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class ModelSpec(SpecModel):
    """The network: `logistic` (binary: one logit; multiclass: softmax regression), `linear` (regression),
    `mlp` (any task), or `python`: the site's own `torch.nn.Module` from `builder(n_inputs, n_outputs,
    **options)`, imported at each site from its own environment."""

    kind: Literal["logistic", "linear", "mlp", "python"] = "logistic"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default=[64, 32], description="mlp: hidden layer sizes")
    activation: Literal["relu", "tanh"] = Field(default="relu", description="mlp: between hidden layers")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="mlp: after each hidden layer")
    builder: str | None = Field(default=None, description='python: "package.module:function"')
    options: dict[str, Any] = Field(default_factory=dict, description="python: keyword arguments of the builder")

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> ModelSpec:
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("an MLP needs at least one hidden layer, got hidden: [] (fix: e.g. hidden: [64, 32], "
                             "or kind: logistic / linear)")
        if self.kind == "python":
            if self.builder is None:
                raise ValueError('model kind python needs builder: "package.module:function" (fix: name the '
                                 "function that returns your torch.nn.Module)")
            if not BUILDER.match(self.builder):
                raise ValueError(f'expected builder as "package.module:function", got {self.builder!r}')
        elif self.builder is not None or self.options:
            raise ValueError(f"builder and options belong to model kind python, not {self.kind} (fix: remove them, "
                             "or set kind: python)")
        return self


class TrainSpec(SpecModel):
    rounds: int = Field(default=30, ge=1, description="federated rounds (= epochs of the baselines)")
    learning_rate: float = Field(default=0.3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    local_epochs: int = Field(default=1, ge=1, description="passes over a site's records per round")
    seed: int = Field(default=0, description="seeds the model's initial parameters, the splits and the shuffles")
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="adam keeps its state at the site")
    weight_decay: float = Field(default=0.0, ge=0.0, description="L2 penalty added to the gradient")
    proximal_mu: float = Field(default=0.0, ge=0.0, description="FedProx: adds mu/2 |w - w_global|^2 to the loss")
    init_from: str = Field(
        default="none", pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="none: fresh parameters; latest, production or a run id: start from that registered model, "
                    "when it reads the same inputs with the same architecture")


class DpSpec(SpecModel):
    """Differential privacy: `site` protects each site's whole update per round (clipped to `clip_norm`, Gaussian
    noise); `record` runs DP-SGD inside local training (Opacus), protecting each record."""

    level: Literal["site", "record"] = "site"
    clip_norm: float = Field(default=1.0, gt=0, description="L2 bound of an update (site) or a record's gradient")
    noise_multiplier: float = Field(default=1.0, gt=0, description="noise standard deviation / clip_norm")
    delta: float = Field(default=1e-5, gt=0, lt=1)
    target_epsilon: float | None = Field(default=None, gt=0, description="stop before a round would pass it")


class PrivacySpec(SpecModel):
    """Beyond "records stay at the sites": the server learns only the sum (`secure_aggregation`), and the model
    says little about any one site or record (`dp`)."""

    secure_aggregation: bool = Field(default=False, description="pairwise masks: the server sees only the sum")
    dp: DpSpec | None = None


class EvaluationSpec(SpecModel):
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="each site holds out this seeded, stratified share of its records"
    )


class PromotionSpec(SpecModel):
    """When a finished run replaces the model registry's `production` model (fedgrove/promotion.py)."""

    max_regression: float = Field(
        default=0.01, ge=0, description="promote only if the pooled test metric is no worse than production's by "
        "more than this (accuracy for classification, RMSE for regression, in its own units)")
    auto: bool = Field(default=True, description="false: register the run, never promote it by itself")


class FederationSpec(SpecModel):
    """What the federation trains. Shared by every site; holds no credential and, in sites mode, no path."""

    task: Task = Field(default="binary", description="binary: two labels; multiclass: two or more; regression: "
                       "a number")
    target: str = Field(min_length=1, description="the label column")
    features: Literal["all"] | Annotated[list[str], Field(min_length=1)] = Field(
        default="all", description="all: every column but the target and `exclude`; or an explicit list"
    )
    exclude: list[str] = Field(default_factory=list, description="columns never used, e.g. record identifiers")
    categorical: list[str] | None = Field(
        default=None, description="columns one-hot encoded; default: every feature column that holds text"
    )
    min_category_count: int = Field(
        default=5, ge=1, description="a category rarer than this, summed over all sites, is counted as `other`"
    )
    select: Selection | None = None
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    min_records: int = Field(default=10, ge=1, description="a site with fewer records does not take part")
    privacy: PrivacySpec = PrivacySpec()
    promotion: PromotionSpec = PromotionSpec()
    sites: dict[str, DataSource | None] = Field(
        default_factory=dict,
        description="site name -> its data source (one-machine mode); in sites mode only the names are sent",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_for_the_task(cls, value: Any) -> Any:
        """Without a `model`, a regression gets `linear` and a classification `logistic`."""
        if isinstance(value, dict) and "model" not in value and value.get("task") == "regression":
            return {**value, "model": {"kind": "linear"}}
        return value

    @field_validator("sites", mode="before")
    @classmethod
    def _sites_as_mapping(cls, value: Any) -> Any:
        """A plain list of names is a roster without sources (sites mode); a source that cannot be read is named
        with its site."""
        if isinstance(value, list):
            return {name: None for name in value}
        if isinstance(value, dict):
            checked = {}
            for name, source in value.items():
                try:
                    checked[name] = DataSource.model_validate(source) if isinstance(source, dict) else source
                except SourceError as exc:
                    raise ValueError(f"site {name!r}: {exc.public}") from None
            return checked
        return value

    @field_validator("sites")
    @classmethod
    def _site_names(cls, value: dict[str, DataSource | None]) -> dict[str, DataSource | None]:
        bad = [name for name in value if not SITE_NAME.match(name)]
        if bad:
            raise ValueError(f"expected site names of 1-64 characters from [A-Za-z0-9._-], starting with a letter "
                             f"or digit, got {bad}")
        return value

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> FederationSpec:
        listed = self.features if isinstance(self.features, list) else []
        problems = []
        if self.target in listed:
            problems.append(f"the target {self.target!r} is also listed under features")
        if self.target in self.exclude:
            problems.append(f"the target {self.target!r} is also listed under exclude")
        if overlap := sorted(set(listed) & set(self.exclude)):
            problems.append(f"{overlap} are listed under both features and exclude")
        if duplicated := sorted({name for name in listed if listed.count(name) > 1}):
            problems.append(f"{duplicated} are listed more than once under features")
        if self.categorical is not None:
            if self.target in self.categorical:
                problems.append(f"the target {self.target!r} is listed under categorical")
            if listed and (unknown := sorted(set(self.categorical) - set(listed))):
                problems.append(f"categorical {unknown} are not among the listed features")
            if excluded := sorted(set(self.categorical) & set(self.exclude)):
                problems.append(f"categorical {excluded} are also listed under exclude")
        dp = self.privacy.dp
        if dp is not None and dp.level == "record" and (self.train.proximal_mu or self.train.optimizer != "sgd"):
            problems.append("record-level DP trains with DP-SGD (Opacus's optimizer over SGD), without "
                            "proximal_mu or Adam (fix: train.optimizer: sgd and train.proximal_mu: 0, or dp.level: "
                            "site)")
        if self.privacy.secure_aggregation and 0 < len(self.sites) < 2:
            problems.append("secure aggregation hides a site among the others and needs at least 2 sites (fix: add "
                            "sites, or set privacy.secure_aggregation: false)")
        fits = {"logistic": ("binary", "multiclass"), "linear": ("regression",)}
        if self.model.kind in fits and self.task not in fits[self.model.kind]:
            problems.append(f"model kind {self.model.kind} does not fit task {self.task} (fix: kind "
                            f"{'linear' if self.task == 'regression' else 'logistic'}, mlp or python)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def classification(self) -> bool:
        return self.task != "regression"

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """`sites` may also be written as a list of names (the validator above turns it into a mapping): say so
        in the schema, which Prefect checks parameters against and shows as a form."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        sites = target["properties"]["sites"]
        target["properties"]["sites"] = {
            "title": sites.pop("title", "Sites"), "description": sites.pop("description", ""),
            "anyOf": [sites, {"type": "array", "items": {"type": "string"}}],
        }
        return schema

    def roster(self) -> list[str]:
        """The sites' names in the order every site agrees on (sorted): a site's rank is its index here."""
        return sorted(self.sites)

    def shared(self) -> FederationSpec:
        """This spec as the coordinator sends it to sites: the site names without their data sources."""
        return self.model_copy(update={"sites": {name: None for name in self.sites}})

    def with_paths_from(self, folder: Path) -> FederationSpec:
        """Relative local `data` paths made absolute against `folder` (where the spec file lies); an s3:// URL or a
        block reference stays as it is."""
        sites = {}
        for name, source in self.sites.items():
            if source is not None and source.data is not None and "://" not in source.data \
                    and not is_block_source(source.data) and not Path(source.data).is_absolute():
                source = source.model_copy(update={"data": str((folder / source.data).resolve())})
            sites[name] = source
        return self.model_copy(update={"sites": sites})

    def fingerprint(self) -> str:
        """A short hash of what shapes the model (sources left out): sites compare it before they federate."""
        document = self.shared().model_dump(mode="json")
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


class SpecError(ValueError):
    """A spec file that cannot be read or does not describe a federation; the message names key and fix."""


def describe_validation_error(error: ValidationError, *, source: str) -> str:
    """One line per problem: `<source>: <dotted.key>: <what> (fix: ...)`."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {where!r} (fix: remove it, or correct its spelling; the keys are "
                         "listed in the README, 'The federation spec')")
        elif problem["type"] == "missing":
            lines.append(f"{source}: {where}: required key missing (fix: add it)")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {message}, got {problem['input']!r}"
                         if problem["type"] != "value_error" else f"{source}: {where}: {message}")
    return "\n".join(lines)


def parse_spec(document: Any, *, source: str = "spec") -> FederationSpec:
    """Validate a parsed document (a mapping), turning pydantic's errors into `SpecError`."""
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping of spec keys (task, target, ...), got "
                        f"{type(document).__name__}")
    try:
        return FederationSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, source=source)) from None


def load_spec(path: str | Path) -> FederationSpec:
    """Read a YAML spec file; relative data paths in `sites` are taken from the spec file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file (fix: pass the path of your fedgrove.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read as UTF-8 text ({exc.__class__.__name__})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(document, source=str(path)).with_paths_from(path.resolve().parent)
