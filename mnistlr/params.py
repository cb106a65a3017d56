"""Typed, validated params: loaded once from params.yaml at the edge of each stage.

Every default here is the value params.yaml sets for that key, and params.yaml sets every key
(tests/test_params.py checks both), so a key left out of a params file means what the committed
file says. The exceptions are the collections of named or listed entries (`variants`, the studies'
`candidates`): params.yaml defines their entries, each with every key; the default here is a single
entry of default values.

params.yaml is read as DVC reads and writes it (ruamel.yaml, YAML 1.2), so a value means here what it
means to `dvc exp run -S` and `dvc params diff`: `1e-05`, as DVC writes 1e-5, is a number.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.error import MarkedYAMLError

from mnistlr.errors import MnistlrError

MNIST_TRAIN_SIZE = 60_000

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]

# YAML 1.1 (PyYAML, and params files written for it) reads these words as booleans; YAML 1.2, which DVC
# reads, as text. A boolean knob takes them as 1.1 did, so such a file, or `-S data.deskew=yes`, keeps
# its meaning.
YAML11_BOOLS = {
    **dict.fromkeys(("yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "off", "Off", "OFF"), False),
}


def _yaml11_bool(value: Any) -> Any:
    return YAML11_BOOLS.get(value, value) if isinstance(value, str) else value


Bool = Annotated[bool, BeforeValidator(_yaml11_bool)]


class _Strict(BaseModel):
    # strict: "10" is not a number; extra=forbid: a misspelt key is an error, not a new knob;
    # no inf/nan: YAML's .inf would pass lr > 0 and only fail later, mid-training.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


Auto = Literal["auto"]


class DataParams(_Strict):
    deskew: Bool = False  # straighten each digit (shear from its second moments, centre its mass) first
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
    """A learning rate per optimizer."""

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
    cuda_graph: Bool = True  # on CUDA, replay epochs after the first as one CUDA graph each
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
    refit: Bool = True  # refit the winner on train + val before the single test evaluation


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


def _annotation_at(loc: tuple[Any, ...]) -> Any:
    """The type the params expect at `loc` (None where `loc` names no field); a name under a dict
    (a variant) or an index into a list (a candidate) stands for one of its entries."""
    ann: Any = Params
    for part in loc:
        if get_origin(ann) in (dict, list):
            ann = get_args(ann)[-1]  # the entry named or indexed by `part`
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and str(part) in ann.model_fields:
            ann = ann.model_fields[str(part)].annotation
        else:
            return None
    return ann


def _model(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc`, to list its accepted keys."""
    return _model(_annotation_at(loc[:-1]))


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _mapping_expected(key: str, ann: Any) -> str:
    """What to write where a single value was given for a group of params: the group's own keys."""
    if model := _model(ann):
        what = "a learning rate per optimizer" if model is LearningRates else "a mapping of params"
        return f"{what} is expected: set {_either([f'{key}.{name}' for name in model.model_fields])}"
    entry = get_args(ann)[-1] if get_origin(ann) in (dict, list) else None
    if get_origin(ann) is dict and (model := _model(entry)):
        fields = list(model.model_fields)
        return f"a mapping of names, each with {', '.join(fields)}, is expected: e.g. set {key}.<name>.{fields[0]}"
    if get_origin(ann) is list and (model := _model(entry)):
        return f"a list is expected, each entry a mapping of {', '.join(model.model_fields)}"
    if get_origin(ann) is list:
        return "a list of numbers is expected, e.g. [0.0, 1.0e-4]"
    return "a mapping is expected"


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
    if err["type"] in ("model_type", "dict_type", "list_type"):
        return f"{source}: {key} = {value!r}: {_mapping_expected(key, _annotation_at(loc))}"
    if err["type"] == "bool_type":
        return f"{source}: {key} = {value!r}: a boolean is expected; accepted: true or false"
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


def read_yaml(path: str | Path) -> Any:
    """A YAML file (params.yaml, dvc.yaml, dvc.lock) as DVC reads it: ruamel.yaml's safe loader, YAML 1.2,
    with its C parser where installed (as dvc.utils.serialize.parse_yaml). Invalid YAML, a duplicate key
    included, is one MnistlrError naming the line; a missing file raises FileNotFoundError."""
    text = Path(path).read_text()
    try:
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise MnistlrError(f"{path}: not valid YAML: {exc.problem or exc.context}{where}") from None
    except YAMLError as exc:
        raise MnistlrError(f"{path}: not valid YAML: {(str(exc).strip().splitlines() or ['?'])[0]}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (as DVC reads it: read_yaml)."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except FileNotFoundError:
        if path.is_absolute():
            raise MnistlrError(f"params file not found: {path}") from None
        raise MnistlrError(
            f"{path} not found in {Path.cwd()}: run the stages from the repository root (where dvc.yaml is), "
            "e.g. `dvc repro`, or pass --params"
        ) from None
    return parse_params(raw, str(path))


# The train params that may differ between the models of one batched training program (train.fit_models).
# Points of a grid that agree on everything else training reads (group_key) train in one pass (train.train_grid).
PER_MODEL_KEYS = ("lr", "weight_decay", "l1", "patience")


def group_key(params: Params) -> tuple[tuple[str, object], ...]:
    """What points must share to train in one pass (train.train_grid): the seed, optimizer, data and variants,
    and every train param but PER_MODEL_KEYS. The other optimizers' learning rates, which training does not
    read, are left out too; evaluate, report and studies params do not touch training."""
    train = params.train.model_dump(exclude=set(PER_MODEL_KEYS))
    return (
        ("seed", params.seed),
        ("optimizer", params.optimizer),
        ("data", json.dumps(params.data.model_dump(), sort_keys=True)),
        ("variants", json.dumps({name: v.model_dump() for name, v in params.variants.items()})),
        *((f"train.{k}", json.dumps(v, sort_keys=True)) for k, v in sorted(train.items())),
    )
