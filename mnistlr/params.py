"""Typed, validated params: loaded once from params.yaml at the edge of each stage.

Every default here is the value params.yaml sets for that key, and params.yaml sets every key
(tests/test_params.py checks both), so a key left out of a params file means what the committed
file says. The exceptions are the collections of named or listed entries (`variants`, the studies'
`candidates`): params.yaml defines their entries, each with every key; the default here is a single
entry of default values.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mnistlr.errors import MnistlrError

MNIST_TRAIN_SIZE = 60_000

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    # strict: "10" is not a number; extra=forbid: a misspelt key is an error, not a new knob;
    # no inf/nan: YAML's .inf would pass lr > 0 and only fail later, mid-training.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


Auto = Literal["auto"]


class DataParams(_Strict):
    deskew: bool = False  # straighten each digit (shear from its second moments, centre its mass) first
    # auto: MNIST's published 0.1307 / 0.3081 for plain pixels, measured on the training split when deskewed
    mean: float | Auto = "auto"
    std: PositiveFloat | Auto = "auto"

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        # one message naming both accepted forms, instead of one error per member of the union
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("accepted: a number or 'auto'")
        if not math.isfinite(value):
            raise ValueError("input should be a finite number")
        if info.field_name == "std" and value <= 0:
            raise ValueError("input should be greater than 0 (or 'auto')")
        return value

    val_size: Annotated[int, Field(gt=0, lt=MNIST_TRAIN_SIZE)] = 10_000


class VariantParams(_Strict):
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    noise: Annotated[float, Field(ge=0, lt=1)] = 0.0


class LearningRates(_Strict):
    sgd: PositiveFloat = 0.1
    adam: PositiveFloat = 1e-3
    lbfgs: PositiveFloat = 1.0


class TrainParams(_Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    lr: LearningRates = LearningRates()
    schedule: Literal["constant", "cosine"] = "cosine"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: NonNegativeFloat = 0.0
    l1: NonNegativeFloat = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graph: bool = True  # on CUDA, replay epochs after the first as one CUDA graph each
    grad_clip: NonNegativeFloat = 0.0  # max global gradient norm per step; 0 = off
    patience: Annotated[int, Field(ge=0)] = 0  # epochs without val-accuracy gain before stopping; 0 = off
    loss: Literal["ce", "mse"] = "ce"  # ce: logistic regression; mse: least squares on one-hot targets
    lbfgs_iters: PositiveInt = 50  # optimizer lbfgs: full-batch L-BFGS iterations per epoch


class EvaluateParams(_Strict):
    sparsity_threshold: PositiveFloat = 1e-3
    ece_bins: PositiveInt = 15


class ReportParams(_Strict):
    top_confusions: PositiveInt = 5


class SweepPoint(_Strict):
    """One candidate of the best-linear-model sweep: an optimizer and its hyperparameters."""

    optimizer: Literal["sgd", "adam", "lbfgs"] = "sgd"
    lr: PositiveFloat = 0.1
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    weight_decay: NonNegativeFloat = 0.0


class MseStudy(_Strict):
    lr: PositiveFloat = 0.003  # SGD on least squares diverges at the CE learning rate 0.1 (and at 0.01)
    epochs: PositiveInt = 10


class OptimumStudy(_Strict):
    weight_decays: list[NonNegativeFloat] = [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    lbfgs_iters: PositiveInt = 300  # total full-batch iterations per L-BFGS fit
    epochs: PositiveInt = 10  # of the SGD and Adam runs compared against the optimum


class L1L2Study(_Strict):
    values: list[NonNegativeFloat] = [0.0, 1e-6, 1e-5, 1e-4]  # each used as train.l1, then as train.weight_decay
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 0.1  # SGD


class SweepStudy(_Strict):
    candidates: list[SweepPoint] = [SweepPoint()]
    refit: bool = True  # refit the winner on train + val before the single test evaluation


class StudiesParams(_Strict):
    """The separate studies pipeline (studies/dvc.yaml); each study stage reads only its own key."""

    mse: MseStudy = MseStudy()
    optimum: OptimumStudy = OptimumStudy()
    l1l2: L1L2Study = L1L2Study()
    sweep: SweepStudy = SweepStudy()
    deskew: SweepStudy = SweepStudy()  # the same selection on deskewed digits


VariantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]


class Params(_Strict):
    seed: Annotated[int, Field(ge=0)] = 42
    optimizer: Literal["sgd", "adam", "lbfgs"] = "sgd"
    data: DataParams = DataParams()
    variants: dict[VariantName, VariantParams] = Field(default_factory=lambda: {"full": VariantParams()}, min_length=1)
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    studies: StudiesParams = StudiesParams()

    @property
    def lr(self) -> float:
        """The learning rate of the chosen optimizer."""
        return getattr(self.train.lr, self.optimizer)

    def reference_variant(self) -> str:
        """The variant that stands for 'the full model': 'full', else the first clean full-size one."""
        if "full" in self.variants:
            return "full"
        clean = [n for n, v in self.variants.items() if v.fraction == 1.0 and v.noise == 0]
        return clean[0] if clean else next(iter(self.variants))

    def clean_twin(self, name: str) -> str | None:
        """The clean variant of the same size as noisy variant `name`, if params define one."""
        v = self.variants[name]
        if v.noise == 0:
            return None
        return next((c for c, cv in self.variants.items() if cv.noise == 0 and cv.fraction == v.fraction), None)

    def variant(self, name: str) -> VariantParams:
        """The params of one training-set variant, or a clear error naming the known ones."""
        if name not in self.variants:
            raise MnistlrError(f"unknown variant {name!r}; params.yaml defines: {', '.join(self.variants)}")
        return self.variants[name]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc`, to list its accepted keys."""
    model: type[BaseModel] = Params
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        ann = field.annotation
        if get_origin(ann) is dict:  # variants: the next part is a variant's name
            parts = parts[1:]
            ann = get_args(ann)[1]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict[str, Any], source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        accepted = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), accepted, n=1)
        hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)" if close else ""
        return f"{source}: unknown key {key!r}{hint}; accepted here: {', '.join(accepted)}"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{source}: {key} = {value!r} is not accepted; accepted: {expected}"
    return f"{source}: {key} = {value!r}: {err['msg'].lower().removeprefix('value error, ')}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; a bad value raises one MnistlrError naming it."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MnistlrError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise MnistlrError(_describe(exc.errors()[0], source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MnistlrError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise MnistlrError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_params(raw, str(path))
