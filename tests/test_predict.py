"""`mnistlr predict`: MNIST-style preprocessing, classification of PNG digits with the model's own
normalization, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mnistlr.cli import app
from mnistlr.data import IN_FEATURES, NUM_CLASSES, normalize, read_images, read_labels
from mnistlr.errors import MnistlrError
from mnistlr.model import Model, load_model
from mnistlr.predict import center_of_mass, load_gray, predict_files, preprocess_file, to_mnist

MEAN, STD = 0.1307, 0.3081
runner = CliRunner()


def random_model(seed: int = 0, mean: float = MEAN, std: float = STD) -> Model:
    rng = np.random.default_rng(seed)
    return Model(weight=rng.normal(0, 0.01, (NUM_CLASSES, IN_FEATURES)).astype(np.float32),
                 bias=np.zeros(NUM_CLASSES, np.float32), mean=mean, std=std)


def ink_sum_model(mean: float, std: float) -> Model:
    """Class 0 scores the sum of the normalized pixels, class 1 its negative, the rest 0: which of the
    two wins depends only on the normalization the model carries."""
    weight = np.zeros((NUM_CLASSES, IN_FEATURES), np.float32)
    weight[0], weight[1] = 1.0, -1.0
    return Model(weight=weight, bias=np.zeros(NUM_CLASSES, np.float32), mean=mean, std=std)


def test_preprocess_inverts_crops_fits_20x20_and_centres_mass():
    img = np.full((100, 60), 255.0)  # white page
    img[10:50, 5:15] = 0.0  # a dark bar 40 high, 10 wide, far off-centre
    out = to_mnist(img)
    assert out.shape == (28, 28) and out.max() == pytest.approx(1.0, abs=0.02)
    rows, cols = np.nonzero(out > 0.05)
    assert rows.max() - rows.min() + 1 == 20  # the long side fits the 20-pixel box
    assert 4 <= cols.max() - cols.min() + 1 <= 7  # aspect kept: 10/40 of 20 = 5 (+ anti-aliasing)
    cy, cx = center_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out[0].max() == 0 and out[:, 0].max() == 0  # background black (inverted)


def test_dark_background_is_not_inverted():
    img = np.zeros((28, 28))
    img[6:22, 12:16] = 200.0
    out = to_mnist(img)
    assert out[14, 14] > 0.5 and out[0, 0] == 0


def test_mnist_digit_round_trips_close_to_itself():
    img = np.zeros((28, 28))
    img[4:24, 10:18] = 255.0  # already 20 high and centred
    out = to_mnist(img)
    assert np.abs(out - img / 255).mean() < 0.05


def test_blank_and_unreadable_images_are_one_line_errors(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    with pytest.raises(MnistlrError, match="blank image"):
        to_mnist(load_gray(blank), str(blank))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(MnistlrError, match="not a readable image"):
        load_gray(junk)
    with pytest.raises(MnistlrError, match="image not found"):
        load_gray(tmp_path / "missing.png")


def test_transparent_png_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).line([(20, 5), (20, 35)], fill=(0, 0, 0, 255), width=4)
    img.save(tmp_path / "t.png")
    x = to_mnist(load_gray(tmp_path / "t.png"))
    assert x.max() > 0.9 and x[0, 0] == 0


def test_preprocess_normalizes_with_the_models_mean_and_std(tmp_path):
    img = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(img).line([(20, 5), (20, 35)], fill=0, width=4)
    img.save(tmp_path / "bar.png")
    raw = to_mnist(load_gray(tmp_path / "bar.png")).reshape(-1)
    for mean, std in ((MEAN, STD), (0.5, 0.25)):
        x = preprocess_file(tmp_path / "bar.png", random_model(mean=mean, std=std))
        assert x.shape == (784,) and x.dtype == np.float32
        np.testing.assert_allclose(x, (raw - mean) / std, rtol=1e-5, atol=1e-5)
        assert float(x.min()) == pytest.approx(-mean / std, abs=1e-5)  # the black background


def test_predict_takes_the_normalization_from_the_model_file(tmp_path):
    """The same weights predict differently when the file carries a different mean: predict reads it
    from the model, not from params.yaml (there is none here)."""
    img = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(img).line([(25, 5), (25, 45)], fill=0, width=5)
    img.save(tmp_path / "one.png")
    ink = to_mnist(load_gray(tmp_path / "one.png")).mean()  # between 0 and 1: a thin stroke on black
    below, above = ink_sum_model(mean=0.0, std=1.0), ink_sum_model(mean=0.95, std=1.0)
    assert 0.0 < ink < 0.95
    below.save(tmp_path / "below.npz")
    above.save(tmp_path / "above.npz")
    assert predict_files([tmp_path / "one.png"], tmp_path / "below.npz")[0]["prediction"] == 0  # sum > 0
    assert predict_files([tmp_path / "one.png"], tmp_path / "above.npz")[0]["prediction"] == 1  # sum < 0


def test_cli_text_json_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: predict needs only the model file
    model = random_model()
    model.save(tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz").mean == pytest.approx(MEAN)
    img = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(img).line([(25, 5), (25, 45)], fill=0, width=5)
    img.save(tmp_path / "one.png")
    res = runner.invoke(app, ["predict", "one.png", "--model", "m.npz"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("one.png: ") and res.output.count("(") == 3
    res = runner.invoke(app, ["predict", "one.png", "one.png", "--model", "m.npz", "--json"])
    data = json.loads(res.output)
    assert len(data) == 2 and len(data[0]["top"]) == 3
    probs = [t["probability"] for t in data[0]["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert data[0]["prediction"] == data[0]["top"][0]["class"]
    # the probabilities are the model's softmax of the preprocessed image
    logits = model.logits(preprocess_file(tmp_path / "one.png", model)[None])[0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [t["class"] for t in data[0]["top"]] == list(np.argsort(-expected)[:3])
    assert probs == pytest.approx(sorted(expected, reverse=True)[:3], abs=1e-6)
    Image.new("L", (30, 30), 0).save(tmp_path / "black.png")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for args, msg in ((["black.png", "--model", "m.npz"], "blank image"),
                      (["nope.png", "--model", "m.npz"], "image not found"),
                      (["one.png", "--model", "missing.npz"], "no model at missing.npz"),
                      (["one.png", "--model", "junk.npz"], "not a model file"),
                      (["one.png"], "no model at models/full.npz")):  # the default model path
        res = runner.invoke(app, ["predict", *args])
        assert res.exit_code == 1 and msg in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_predict_no_longer_accepts_params():
    res = runner.invoke(app, ["predict", "one.png", "--params", "params.yaml"])
    assert res.exit_code == 2 and "--params" in res.output


def draw_digit(path, strokes, size=(120, 160), width=12):
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for s in strokes:
        d.line(s, fill="black", width=width)
    img.save(path)


@pytest.fixture(scope="module")
def real_model(real_mirror, tmp_path_factory):
    """A model fitted in seconds on 20k real training images (L-BFGS, weight decay 1e-4), saved as the
    train stage saves it."""
    import torch

    from mnistlr.params import TrainParams
    from mnistlr.train import fit

    imgs = read_images(real_mirror / "train-images-idx3-ubyte.gz")[:20000]
    labels = torch.from_numpy(read_labels(real_mirror / "train-labels-idx1-ubyte.gz")[:20000])
    x = torch.from_numpy(normalize(imgs, MEAN, STD))
    cfg = TrainParams(epochs=2, lbfgs_iters=50, weight_decay=1e-4, device="cpu")
    model, _ = fit(x, labels, x[:100], labels[:100], cfg, "lbfgs", 1.0, 0)
    path = tmp_path_factory.mktemp("model") / "full.npz"
    model.to_model(MEAN, STD).save(path)
    return path


@pytest.mark.slow
def test_real_test_digits_as_png_are_mostly_right(real_mirror, real_model, tmp_path):
    imgs = read_images(real_mirror / "t10k-images-idx3-ubyte.gz")[:200]
    labels = read_labels(real_mirror / "t10k-labels-idx1-ubyte.gz")[:200].tolist()
    paths = []
    for i, img in enumerate(imgs):
        # as a user would have them: dark ink on white, enlarged, off-centre on a bigger page
        page = Image.new("L", (90, 70), 255)
        page.paste(Image.fromarray(255 - img).resize((56, 56), Image.Resampling.BILINEAR), (30, 4))
        paths.append(tmp_path / f"{i}_{labels[i]}.png")
        page.save(paths[-1])
    results = predict_files(paths, real_model)
    right = sum(r["prediction"] == y for r, y in zip(results, labels))
    assert right / len(labels) >= 0.85, right


@pytest.mark.slow
def test_drawn_digits(real_model, tmp_path):
    draw_digit(tmp_path / "one.png", [[(60, 20), (60, 140)]])
    draw_digit(tmp_path / "seven.png", [[(20, 25), (100, 25)], [(100, 25), (45, 140)]])
    one, seven = predict_files([tmp_path / "one.png", tmp_path / "seven.png"], real_model)
    assert one["prediction"] == 1, one
    assert seven["prediction"] == 7, seven


def test_a_saved_synthetic_digit_is_a_valid_input(synthetic_mirror, tmp_path):
    """Without real data: a saved synthetic digit goes through predict's preprocessing as a valid input."""
    img = read_images(synthetic_mirror / "t10k-images-idx3-ubyte.gz")[0]
    Image.fromarray(img).save(tmp_path / "s.png")
    x = preprocess_file(tmp_path / "s.png", random_model())
    assert x.shape == (784,) and x.dtype == np.float32
    assert float(x.min()) == pytest.approx(-MEAN / STD, abs=1e-6)
    assert 0 < float(x.max()) <= (1 - MEAN) / STD + 1e-5  # ink in (0, 1] before normalizing
