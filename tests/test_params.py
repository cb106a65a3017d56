"""params.yaml and the typed params in mnistlr/params.py are one source: every key of the typed params
is written in params.yaml, and every default equals the value params.yaml gives it.

The models are walked field by field, so a knob added to mnistlr/params.py is checked without being
named here. Fields that hold named or listed entries of a model (`variants`, the studies' `candidates`)
are the experiment's design rather than one default: params.yaml defines their entries, and each
entry must write every key of its model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from mnistlr.params import Params, parse_params

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
    return yaml.safe_load(PARAMS_YAML.read_text())


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
