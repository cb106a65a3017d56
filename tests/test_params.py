"""params.yaml and the typed params in mnistlr/params.py are one source: every key of the typed params
is written in params.yaml, and every default equals the value params.yaml gives it.

The models are walked field by field, so a knob added to mnistlr/params.py is checked without being
named here. Fields that hold named or listed entries of a model (`variants`, the studies' `candidates`)
are the experiment's design rather than one default: params.yaml defines their entries, and each
entry must write every key of its model.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import modify_yaml, parse_yaml
from pydantic import BaseModel

from mnistlr.errors import MnistlrError
from mnistlr.params import Params, load_params, parse_params, read_yaml

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def _model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _entry_model(annotation: Any) -> type[BaseModel] | None:
    """The model of each entry when a field is a dict or list of models, else None."""
    if get_origin(annotation) in (dict, list):
        return _model(get_args(annotation)[-1])
    return None


def _entries(value: Any) -> list[tuple[str, Any]]:
    """(label, entry) of a dict's or a list's entries."""
    return (
        [(str(k), v) for k, v in value.items()]
        if isinstance(value, dict)
        else [(str(i), v) for i, v in enumerate(value)]
    )


def undocumented_keys(raw: dict, model: type[BaseModel] = Params, path: str = "") -> list[str]:
    """Keys of the typed params that `raw` (a parsed params.yaml) does not write."""
    missing = []
    for name, field in model.model_fields.items():
        key = path + name
        if not isinstance(raw, dict) or name not in raw:
            missing.append(key)
        elif sub := _model(field.annotation):
            missing += undocumented_keys(raw[name], sub, key + ".")
        elif entry := _entry_model(field.annotation):
            for label, value in _entries(raw[name]):
                missing += undocumented_keys(value, entry, f"{key}.{label}.")
    return missing


def default_mismatches(raw: dict) -> list[str]:
    """'key: default X, params.yaml Y' for every key whose typed default is not `raw`'s value (a key
    `raw` leaves out parses to its default, so only written keys can differ)."""
    out = []

    def walk(model: type[BaseModel], default: dict, value: dict, path: str) -> None:
        for name, field in model.model_fields.items():
            key = path + name
            if sub := _model(field.annotation):
                walk(sub, default[name], value[name], key + ".")
            elif _entry_model(field.annotation) is None and default[name] != value[name]:
                out.append(f"{key}: default {default[name]!r}, params.yaml {value[name]!r}")

    walk(Params, Params().model_dump(), parse_params(raw).model_dump(), "")
    return out


@pytest.fixture(scope="module")
def raw() -> dict:
    return read_yaml(PARAMS_YAML)


def test_params_yaml_writes_every_key_of_the_typed_params(raw):
    assert undocumented_keys(raw) == []


def test_every_typed_default_is_the_value_in_params_yaml(raw):
    assert default_mismatches(raw) == []


def test_the_checks_find_a_changed_value_and_a_missing_key(raw):
    changed = copy.deepcopy(raw)
    changed["studies"]["l1l2"]["epochs"] = 7
    changed["train"]["lr"]["adam"] = 0.002
    changed["studies"]["optimum"]["weight_decays"] = [0.0]
    assert default_mismatches(changed) == [
        "train.lr.adam: default 0.001, params.yaml 0.002",
        "studies.optimum.weight_decays: default [0.0, 1e-05, 0.0001, 0.0003, 0.001, 0.003], params.yaml [0.0]",
        "studies.l1l2.epochs: default 10, params.yaml 7",
    ]
    del changed["train"]["patience"], changed["variants"]["frac10"]["noise"]
    del changed["studies"]["deskew"]["candidates"][3]["batch_size"], changed["report"]
    assert undocumented_keys(changed) == [
        "variants.frac10.noise",
        "train.patience",
        "report",
        "studies.deskew.candidates.3.batch_size",
    ]
    # entries of a collection are the design, not a default: other variants are no mismatch
    changed = copy.deepcopy(raw)
    changed["variants"] = {"half": {"fraction": 0.5, "noise": 0.0}}
    assert default_mismatches(changed) == [] and undocumented_keys(changed) == []


def test_a_params_file_without_a_key_means_the_committed_value(raw):
    full = parse_params(raw)
    trimmed = copy.deepcopy(raw)
    del trimmed["studies"]["l1l2"], trimmed["studies"]["optimum"]["weight_decays"], trimmed["train"]["schedule"]
    assert parse_params(trimmed) == full


# --- params.yaml as DVC reads and writes it ----------------------------------------------------------


def _params_file(tmp_path: Path) -> Path:
    shutil.copy(PARAMS_YAML, tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["train.weight_decay=1e-5"], {"weight_decay": 1e-5}),
        (["train.weight_decay=1e-05", "train.l1=1E-6"], {"weight_decay": 1e-5, "l1": 1e-6}),
        (["train.weight_decay=0.00001", "train.grad_clip=1e+3"], {"weight_decay": 1e-5, "grad_clip": 1000.0}),
        (["train.momentum=.5", "train.grad_clip=5."], {"momentum": 0.5, "grad_clip": 5.0}),
        (["train.weight_decay=0", "train.grad_clip=2"], {"weight_decay": 0.0, "grad_clip": 2.0}),
        (["train.lr.adam=3e-4"], {"lr.adam": 3e-4}),
    ],
)
def test_what_dvc_exp_run_set_param_writes_means_what_it_meant(tmp_path, overrides, expected):
    """`dvc exp run -S KEY=VALUE` edits params.yaml with dvc.utils.hydra.apply_overrides: DVC's own code
    writes the file here, and load_params reads each value as the float it was."""
    path = _params_file(tmp_path)
    apply_overrides(path, overrides)
    train = load_params(path).train
    for key, value in expected.items():
        got = train.lr.adam if key == "lr.adam" else getattr(train, key)
        assert type(got) is float and got == value, (key, got)
    # and what DVC itself reads back is the same number (dvc params diff, dvc exp show)
    written = parse_yaml(path.read_text(), str(path))["train"]
    assert written["weight_decay"] == train.weight_decay


def test_dvc_writes_a_small_weight_decay_as_1e_05_and_it_loads(tmp_path):
    path = _params_file(tmp_path)
    with modify_yaml(path) as data:  # DVC's round-trip writer
        data["train"]["weight_decay"] = 1e-5
    assert "weight_decay: 1e-05" in path.read_text()
    assert load_params(path).train.weight_decay == 1e-5


@pytest.mark.parametrize(
    "text,value",
    [
        ("1e-5", 1e-5),
        ("1e-05", 1e-5),
        ("1.0e-5", 1e-5),
        ("1E-5", 1e-5),
        ("1.0E-05", 1e-5),
        ("0.00001", 1e-5),
        ("1e+3", 1000.0),
        ("1.0e+3", 1000.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("3", 3.0),
        ("0", 0.0),
    ],
)
def test_number_forms_people_write_load_as_floats(tmp_path, text, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  weight_decay: {text}  # a comment\n  grad_clip: {text}\n")
    train = load_params(path).train
    assert type(train.weight_decay) is float and train.weight_decay == value
    assert type(train.grad_clip) is float and train.grad_clip == value


@pytest.mark.parametrize(
    "text,value",
    [("true", True), ("false", False), ("True", True), ("FALSE", False), ("yes", True), ("no", False), ("on", True)],
)
def test_boolean_forms_load_as_booleans(tmp_path, text, value):
    """true/false as YAML 1.2 (DVC) writes them; yes/no/on/off, booleans to YAML 1.1 (PyYAML), keep that meaning."""
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  deskew: {text}\ntrain:\n  cuda_graph: {text}\nstudies:\n  sweep:\n    refit: {text}\n")
    params = load_params(path)
    assert (params.data.deskew, params.train.cuda_graph, params.studies.sweep.refit) == (value, value, value)


def test_every_float_knob_holds_a_float_when_written_as_an_integer():
    params = parse_params(
        {
            "data": {"mean": 0, "std": 1},
            "variants": {"a": {"fraction": 1, "noise": 0}},
            "train": {"lr": {"sgd": 1, "adam": 1, "lbfgs": 1}, "momentum": 0, "weight_decay": 0, "l1": 0},
            "studies": {"optimum": {"weight_decays": [0, 1]}, "l1l2": {"values": [0], "lr": 1}},
        }
    )
    floats = [
        params.data.mean,
        params.data.std,
        params.variants["a"].fraction,
        params.variants["a"].noise,
        params.train.lr.sgd,
        params.train.lr.adam,
        params.train.lr.lbfgs,
        params.train.momentum,
        params.train.weight_decay,
        params.train.l1,
        *params.studies.optimum.weight_decays,
        *params.studies.l1l2.values,
        params.studies.l1l2.lr,
    ]
    assert all(type(v) is float for v in floats), floats


def test_the_committed_files_read_as_dvc_reads_them():
    """read_yaml is DVC's reading (dvc.utils.serialize.parse_yaml); the committed params.yaml means the same to
    PyYAML, so the switch changed no committed value."""
    repo = PARAMS_YAML.parent
    for name in ("params.yaml", "dvc.yaml", "studies/dvc.yaml"):
        assert read_yaml(repo / name) == parse_yaml((repo / name).read_text(), name), name
    assert load_params(PARAMS_YAML) == parse_params(yaml.safe_load(PARAMS_YAML.read_text()))


def test_a_duplicate_key_or_broken_yaml_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrain:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(MnistlrError) as info:
        load_params(path)
    assert str(info.value) == (
        f'{path}: not valid YAML: found duplicate key "epochs" with value "4" (original value: "3") (line 4, column 3)'
    )
    path.write_text("train: [1\n")
    with pytest.raises(MnistlrError, match=r"not valid YAML: .* \(line 2, column 1\)$") as info:
        load_params(path)
    assert "\n" not in str(info.value)
