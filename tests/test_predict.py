"""`mnistlr predict`: MNIST-style preprocessing, classification of PNG digits, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mnistlr.cli import app
from mnistlr.errors import MnistlrError
from mnistlr.model import LogisticRegression, save_model
from mnistlr.preprocess import center_of_mass, load_gray, preprocess_file, to_mnist

MEAN, STD = 0.1307, 0.3081
runner = CliRunner()


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


def test_cli_text_json_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 42\n")
    torch.manual_seed(0)
    save_model(LogisticRegression(), tmp_path / "m.pt")
    img = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(img).line([(25, 5), (25, 45)], fill=0, width=5)
    img.save(tmp_path / "one.png")
    res = runner.invoke(app, ["predict", "one.png", "--model", "m.pt"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("one.png: ") and res.output.count("(") == 3
    res = runner.invoke(app, ["predict", "one.png", "one.png", "--model", "m.pt", "--json"])
    data = json.loads(res.output)
    assert len(data) == 2 and len(data[0]["top"]) == 3
    probs = [t["probability"] for t in data[0]["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert data[0]["prediction"] == data[0]["top"][0]["class"]
    Image.new("L", (30, 30), 0).save(tmp_path / "black.png")
    for args, msg in ((["black.png", "--model", "m.pt"], "blank image"), (["nope.png", "--model", "m.pt"], "image not found"),
                      (["one.png", "--model", "missing.pt"], "no model at missing.pt")):
        res = runner.invoke(app, ["predict", *args])
        assert res.exit_code == 1 and msg in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def draw_digit(path, strokes, size=(120, 160), width=12):
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for s in strokes:
        d.line(s, fill="black", width=width)
    img.save(path)


@pytest.fixture(scope="module")
def real_model(real_mirror, tmp_path_factory):
    """A model fitted in seconds on 20k real training images (L-BFGS, weight decay 1e-4)."""
    from mnistlr.dataset import normalize
    from mnistlr.idx import read_images, read_labels
    from mnistlr.params import TrainParams
    from mnistlr.trainer import fit

    imgs = read_images(real_mirror / "train-images-idx3-ubyte.gz")[:20000]
    labels = read_labels(real_mirror / "train-labels-idx1-ubyte.gz")[:20000]
    x = normalize(imgs, MEAN, STD)
    cfg = TrainParams(epochs=2, lbfgs_iters=50, weight_decay=1e-4, device="cpu")
    model, _ = fit(x, labels, x[:100], labels[:100], cfg, "lbfgs", 1.0, 0)
    path = tmp_path_factory.mktemp("model") / "full.pt"
    save_model(model, path)
    return path


def test_real_test_digits_as_png_are_mostly_right(real_mirror, real_model, tmp_path):
    from mnistlr.idx import read_images, read_labels
    from mnistlr.predict import predict_files

    imgs = read_images(real_mirror / "t10k-images-idx3-ubyte.gz")[:200].numpy()
    labels = read_labels(real_mirror / "t10k-labels-idx1-ubyte.gz")[:200].tolist()
    paths = []
    for i, img in enumerate(imgs):
        # as a user would have them: dark ink on white, enlarged, off-centre on a bigger page
        page = Image.new("L", (90, 70), 255)
        page.paste(Image.fromarray(255 - img).resize((56, 56), Image.Resampling.BILINEAR), (30, 4))
        paths.append(tmp_path / f"{i}_{labels[i]}.png")
        page.save(paths[-1])
    results = predict_files(paths, real_model, MEAN, STD)
    right = sum(r["prediction"] == y for r, y in zip(results, labels))
    assert right / len(labels) >= 0.85, right


def test_drawn_digits(real_model, tmp_path):
    draw_digit(tmp_path / "one.png", [[(60, 20), (60, 140)]])
    draw_digit(tmp_path / "seven.png", [[(20, 25), (100, 25)], [(100, 25), (45, 140)]])
    from mnistlr.predict import predict_files

    one, seven = predict_files([tmp_path / "one.png", tmp_path / "seven.png"], real_model, MEAN, STD)
    assert one["prediction"] == 1, one
    assert seven["prediction"] == 7, seven


def test_synthetic_fallback_preprocessed_equals_tensor(synthetic_mirror, tmp_path):
    """Without real data: a saved synthetic digit goes through predict's preprocessing as a valid input."""
    from mnistlr.idx import read_images

    img = read_images(synthetic_mirror / "t10k-images-idx3-ubyte.gz")[0].numpy()
    Image.fromarray(img).save(tmp_path / "s.png")
    x = preprocess_file(tmp_path / "s.png", MEAN, STD)
    assert x.shape == (784,) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(-MEAN / STD, abs=1e-6)
