"""mnistlr.model: the trained model as a file of plain arrays, read back with numpy alone and never unpickled."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mnistlr.cli import app
from mnistlr.data import Preprocessing
from mnistlr.errors import DEBUG_ENV, MnistlrError
from mnistlr.model import FIELDS, Model, load_model


def _model(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    return Model(
        weight=rng.normal(size=(10, 784)).astype(np.float32),
        bias=rng.normal(size=10).astype(np.float32),
        mean=0.2,
        std=0.45,
    )


def _one_line_error(path) -> str:
    with pytest.raises(MnistlrError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_saved_model_round_trips_with_its_normalization(tmp_path):
    model = _model()
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert np.array_equal(loaded.weight, model.weight) and loaded.weight.dtype == np.float32
    assert np.array_equal(loaded.bias, model.bias) and loaded.bias.dtype == np.float32
    assert (loaded.mean, loaded.std, loaded.image_side, loaded.deskew) == (0.2, 0.45, 28, False)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as blob:  # plain arrays, nothing pickled
        assert sorted(blob.files) == sorted(FIELDS)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # written through a temp file, none left over


def test_logits_are_the_linear_map_of_flat_or_image_inputs():
    model = _model()
    x = np.random.default_rng(1).normal(size=(5, 784)).astype(np.float32)
    expected = x.astype(np.float64) @ model.weight.T.astype(np.float64) + model.bias
    assert model.logits(x).shape == (5, 10)
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(model.logits(x.reshape(5, 28, 28)), model.logits(x))


def test_trained_torch_module_becomes_the_same_model():
    import torch

    from mnistlr.train import LogisticRegression, predict_logits

    torch.manual_seed(0)
    net = LogisticRegression()
    model = net.to_model(Preprocessing(deskew=True, mean=0.1307, std=0.2891))
    assert np.array_equal(model.weight, net.fc.weight.detach().numpy())
    assert (model.mean, model.std, model.deskew) == (0.1307, 0.2891, True)
    x = torch.randn(8, 784)
    np.testing.assert_allclose(model.logits(x.numpy()), predict_logits(net, x).numpy(), atol=1e-5)


def test_deskew_flag_round_trips_and_drives_the_preprocessing(tmp_path):
    model = Model(weight=_model().weight, bias=_model().bias, mean=0.13, std=0.29, deskew=True)
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.deskew is True and loaded.preprocessing == Preprocessing(True, 0.13, 0.29, 28)
    # a slanted bar: the deskewing model sees it upright, the plain one as it is
    bar = np.zeros((1, 28, 28), np.float32)
    for r in range(4, 24):
        bar[0, r, 8 + r // 2] = 1.0
    upright = loaded.preprocessing.apply_float(bar).reshape(28, 28) * 0.29 + 0.13
    assert np.abs(upright.sum(0)[13:15].sum() - bar.sum()) < 0.05 * bar.sum()  # the ink is in the middle columns
    plain = Model(loaded.weight, loaded.bias, 0.13, 0.29).preprocessing.apply_float(bar).reshape(28, 28) * 0.29 + 0.13
    np.testing.assert_allclose(plain, bar[0], atol=1e-6)


def test_model_without_its_deskew_flag_is_refused_naming_it(tmp_path):
    model = _model()
    np.savez(
        tmp_path / "old.npz",
        weight=model.weight,
        bias=model.bias,
        mean=np.float64(0.1),
        std=np.float64(0.3),
        image_side=np.int64(28),
    )
    assert _one_line_error(tmp_path / "old.npz").endswith("model file lacks deskew; retrain it with the train stage")


def test_missing_model_says_to_train(tmp_path):
    assert _one_line_error(tmp_path / "none.npz").startswith(
        f"no model at {tmp_path / 'none.npz'}; run the train stage"
    )


def test_file_lacking_a_field_is_named(tmp_path):
    model = _model()
    np.savez(
        tmp_path / "old.npz",
        weight=model.weight,
        bias=model.bias,
        std=np.float64(0.3),
        deskew=np.bool_(False),
        image_side=np.int64(28),
    )
    assert _one_line_error(tmp_path / "old.npz").endswith("model file lacks mean; retrain it with the train stage")


@pytest.mark.parametrize("content", [b"weight,bias\n1,2\n", b"PK\x03\x04 not really a zip"], ids=["text", "broken-zip"])
def test_file_that_is_not_an_npz_is_one_line(tmp_path, content):
    (tmp_path / "m.npz").write_bytes(content)
    assert "not a model file written by the train stage" in _one_line_error(tmp_path / "m.npz")


def test_truncated_npz_is_one_line(tmp_path):
    _model().save(tmp_path / "m.npz")
    blob = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").write_bytes(blob[: len(blob) // 2])
    assert "not a model file written by the train stage" in _one_line_error(tmp_path / "m.npz")


class _Evil:
    """Unpickling this creates the file it names: the proof that a loader ran pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_bearing_npz_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    model = _model()
    evil = np.empty(1, dtype=object)
    evil[0] = _Evil(str(marker))
    np.savez(
        tmp_path / "evil.npz",
        weight=model.weight,
        bias=model.bias,
        mean=evil,
        std=np.float64(0.3),
        deskew=np.bool_(False),
        image_side=np.int64(28),
    )
    assert "not a model file written by the train stage" in _one_line_error(tmp_path / "evil.npz")
    assert not marker.exists()


def test_wrong_shapes_are_named(tmp_path):
    np.savez(
        tmp_path / "m.npz",
        weight=np.zeros((10, 100), np.float32),
        bias=np.zeros(10, np.float32),
        mean=np.float64(0.1),
        std=np.float64(0.3),
        deskew=np.bool_(False),
        image_side=np.int64(28),
    )
    assert _one_line_error(tmp_path / "m.npz").endswith("weight (10, 100) and bias (10,); expected (10, 784) and (10,)")


def _save_fields(path, **changes) -> None:
    """A model file as the train stage writes it, with some fields replaced."""
    model = _model()
    fields = {
        "weight": model.weight,
        "bias": model.bias,
        "mean": np.float64(model.mean),
        "std": np.float64(model.std),
        "deskew": np.bool_(False),
        "image_side": np.int64(28),
        **changes,
    }
    np.savez(path, **fields)


def _with_non_finite(array: np.ndarray, values) -> np.ndarray:
    out = array.copy()
    out.flat[[3, 8, 5][: len(values)]] = values
    return out


@pytest.mark.parametrize(
    ("field", "values", "count"),
    [
        ("weight", [np.nan, np.inf, -np.inf], "3 non-finite values"),
        ("weight", [np.nan], "1 non-finite value"),
        ("bias", [np.inf, np.nan], "2 non-finite values"),
    ],
    ids=["weight-nan-and-infs", "weight-one-nan", "bias"],
)
def test_non_finite_weights_are_refused_counting_them(tmp_path, field, values, count):
    _save_fields(tmp_path / "m.npz", **{field: _with_non_finite(getattr(_model(), field), values)})
    msg = _one_line_error(tmp_path / "m.npz")
    assert msg.startswith(f"{tmp_path / 'm.npz'}: {field} has {count} (nan or inf); ")
    assert msg.endswith("retrain it with the train stage")


def test_every_non_finite_field_is_named_at_once(tmp_path):
    _save_fields(
        tmp_path / "m.npz",
        weight=np.full((10, 784), np.nan, np.float32),
        bias=_with_non_finite(_model().bias, [np.inf]),
        mean=np.float64(np.nan),
        std=np.float64(np.inf),
    )
    msg = _one_line_error(tmp_path / "m.npz")
    assert (
        "weight has 7840 non-finite values (nan or inf), bias has 1 non-finite value (nan or inf), "
        "mean is nan, std is inf;" in msg
    )


def test_weights_beyond_float32_are_refused_as_infinite_without_a_warning(tmp_path):
    """A float64 weight too large for float32 would become inf when used: it is refused, quietly."""
    weight = _model().weight.astype(np.float64)
    weight[0, 0] = 1e39
    _save_fields(tmp_path / "m.npz", weight=weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "weight has 1 non-finite value (nan or inf)" in _one_line_error(tmp_path / "m.npz")


@pytest.mark.parametrize(
    ("std", "named"),
    [(0.0, "std is 0.0, not > 0"), (-0.3, "std is -0.3, not > 0"), (np.nan, "std is nan")],
    ids=["zero", "negative", "nan"],
)
def test_std_must_be_a_positive_number(tmp_path, std, named):
    _save_fields(tmp_path / "m.npz", std=np.float64(std))
    assert (
        f"{tmp_path / 'm.npz'}: {named}; a model needs finite weights, bias and mean and a std > 0"
        in _one_line_error(tmp_path / "m.npz")
    )


@pytest.mark.parametrize("mean", [np.nan, -np.inf], ids=["nan", "-inf"])
def test_non_finite_mean_is_refused(tmp_path, mean):
    _save_fields(tmp_path / "m.npz", mean=np.float64(mean))
    assert f": mean is {float(mean)};" in _one_line_error(tmp_path / "m.npz")


def test_weights_that_are_not_numbers_are_named(tmp_path):
    _save_fields(tmp_path / "m.npz", bias=np.array(["a"] * 10))
    assert _one_line_error(tmp_path / "m.npz").endswith(
        "bias must be numbers, not <U1; retrain it with the train stage"
    )


def test_large_finite_weights_and_a_tiny_std_still_load(tmp_path):
    """Only nan, inf and std <= 0 are refused: extreme but usable numbers load as they are."""
    weight = _model().weight.copy()
    weight[0, 0], weight[1, 1] = 3e38, -3e38
    _save_fields(tmp_path / "m.npz", weight=weight, mean=np.float64(-5.0), std=np.float64(1e-6))
    model = load_model(tmp_path / "m.npz")
    assert model.weight[0, 0] == np.float32(3e38) and (model.mean, model.std) == (-5.0, 1e-6)


def _digit_png(path) -> None:
    img = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(img).line([(25, 5), (25, 45)], fill=0, width=5)
    img.save(path)


def _mnistlr(*args: str, cwd) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mnistlr")
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_mnistlr_predict_refuses_a_nan_model_in_one_line(tmp_path):
    """The command a user runs: a diverged model file is one error line and exit 1, not class 0 at probability nan."""
    _digit_png(tmp_path / "one.png")
    _model().save(tmp_path / "good.npz")
    ok = _mnistlr("predict", "one.png", "--model", "good.npz", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("one.png: ") and "nan" not in ok.stdout, ok.stderr
    models = tmp_path / "models"
    models.mkdir()
    _save_fields(models / "full.npz", weight=_with_non_finite(_model().weight, [np.nan, np.nan, np.inf]))
    res = _mnistlr("predict", "one.png", cwd=tmp_path)  # the default model path
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: models/full.npz: weight has 3 non-finite values (nan or inf); a model needs finite weights, bias and "
        "mean and a std > 0; retrain it with the train stage"
    ]


def test_predict_json_refuses_a_zero_std_model(tmp_path):
    _digit_png(tmp_path / "one.png")
    _save_fields(tmp_path / "m.npz", std=np.float64(0.0))
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "one.png"), "--model", str(tmp_path / "m.npz"), "--json"])
    assert res.exit_code == 1 and "std is 0.0, not > 0" in res.output and "[" not in res.output
    assert len(res.output.strip().splitlines()) == 1
