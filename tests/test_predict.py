"""`mnistlr predict`: MNIST-style preprocessing that leaves MNIST digits unchanged and brings photos and
scans to MNIST form, classification with the model's own normalization, bounded cost for large images,
clear errors."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mnistlr.cli import app
from mnistlr.data import IN_FEATURES, NUM_CLASSES, normalize, read_images, read_labels, split_indices
from mnistlr.errors import MnistlrError
from mnistlr.model import Model, load_model
from mnistlr.predict import (
    MAX_DATA_BYTES,
    MIN_STROKE,
    center_of_mass,
    load_gray,
    predict_files,
    preprocess_file,
    preprocess_gray,
    to_mnist,
)
from tests.conftest import REPO

MEAN, STD = 0.1307, 0.3081
runner = CliRunner()


def random_model(seed: int = 0, mean: float = MEAN, std: float = STD) -> Model:
    rng = np.random.default_rng(seed)
    return Model(
        weight=rng.normal(0, 0.01, (NUM_CLASSES, IN_FEATURES)).astype(np.float32),
        bias=np.zeros(NUM_CLASSES, np.float32),
        mean=mean,
        std=std,
    )


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


def mnist_form_digit() -> np.ndarray:
    """A digit made the way MNIST's were: a binary pen drawing, its box scaled to fit 20x20 (aspect kept,
    anti-aliased), pasted into 28x28 with its centre of mass in pixel (14, 14). uint8, white on black."""
    pen = Image.new("L", (300, 400), 0)
    ImageDraw.Draw(pen).line([(40, 110), (140, 40), (240, 110), (50, 360), (260, 360)], fill=255, width=28)  # a 2
    pen = pen.crop(pen.getbbox())
    fitted = np.asarray(pen.resize((round(20 * pen.width / pen.height), 20), Image.Resampling.BOX), np.float64)
    cy, cx = center_of_mass(fitted)
    top, left = round(14 - cy), round(14 - cx)
    out = np.zeros((28, 28), np.uint8)
    out[top : top + fitted.shape[0], left : left + fitted.shape[1]] = np.round(fitted).astype(np.uint8)
    return out


def test_an_mnist_form_digit_passes_through_unchanged():
    digit = mnist_form_digit()
    assert ((digit > 0) & (digit < 50)).sum() >= 5  # it has faint anti-aliased edges, which must survive
    np.testing.assert_array_equal(to_mnist(digit), digit / 255.0)
    np.testing.assert_array_equal(to_mnist(255 - digit), digit / 255.0)  # the same digit, dark ink on white


def test_an_mnist_form_digit_off_centre_is_moved_back_by_whole_pixels():
    digit = mnist_form_digit()
    moved = np.roll(digit, (2, -3), axis=(0, 1))
    assert moved.sum() == digit.sum()  # nothing wrapped around
    np.testing.assert_array_equal(to_mnist(moved), digit / 255.0)


def test_predicts_output_is_itself_mnist_form():
    """Whatever predict makes of an image, fed back as a 28x28 file it comes out the same."""
    page = np.full((150, 110), 230.0)
    page[30:120, 40:52] = 40.0
    page[30:42, 20:52] = 40.0
    once = np.round(to_mnist(page) * 255)
    np.testing.assert_array_equal(to_mnist(once), once / 255)


def test_faint_ink_and_paper_noise():
    """Faint strokes count as ink (no threshold at a share of the peak); the paper's own noise does not."""
    rng = np.random.default_rng(0)
    page = np.clip(rng.normal(235, 3, (120, 100)), 0, 255)
    page[20:100, 45:55] = 60.0  # the stroke
    page[20:100, 42:45] = 215.0  # a faint edge beside it: 11 % of the ink's contrast
    out = to_mnist(page)
    cols = np.nonzero(out.sum(0) > 0.05)[0]
    assert cols.size >= 4  # the stroke (2.5 px after fitting) and its faint edge
    assert out[:, cols[0]].max() < 0.3 and out.max() > 0.95
    assert (out > 0).sum() <= 80  # noise around the digit does not come through as ink


def test_a_thin_pen_is_widened_to_an_mnist_stroke():
    """A 2-pixel line on a 300x300 page is 0.15 px wide once fitted to 20x20; MNIST strokes are 1.5-4 px."""
    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).line([(150, 20), (150, 280)], fill=0, width=2)
    out = to_mnist(np.asarray(img, np.float64))
    assert out.max() == pytest.approx(1.0, abs=0.05)
    assert 1.5 <= out.sum() / 20 <= 3.0  # ink per row of the 20-pixel stroke: its width in pixels
    assert abs(out.sum() / 20 - MIN_STROKE) <= 0.5
    never = to_mnist(np.asarray(img, np.float64), min_stroke=0.0)  # the threshold the bench calls "never widen"
    assert never.sum() / 20 < 0.5
    wider = to_mnist(np.asarray(img, np.float64), min_stroke=MIN_STROKE + 1.0)
    assert wider.sum() / 20 > out.sum() / 20 + 0.5


def test_a_thick_pen_is_not_thinned():
    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).line([(150, 20), (150, 280)], fill=0, width=40)  # 3 px at 28x28
    out = to_mnist(np.asarray(img, np.float64))
    assert 2.5 <= out.sum() / 20 <= 3.5


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    img = np.full((60, 60), 60000, np.uint16)
    img[10:50, 27:33] = 3000
    Image.fromarray(img).save(tmp_path / "deep.png")
    gray = load_gray(tmp_path / "deep.png")
    assert gray[0, 0] == pytest.approx(60000 / 257, abs=0.5) and gray[30, 30] == pytest.approx(3000 / 257, abs=0.5)
    assert to_mnist(gray).max() > 0.99


def test_blank_and_unreadable_images_are_one_line_errors(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    with pytest.raises(MnistlrError, match="blank image"):
        to_mnist(load_gray(blank), str(blank))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(MnistlrError, match="not a readable image"):
        load_gray(junk)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MnistlrError, match="empty file"):
        load_gray(tmp_path / "empty.png")
    with pytest.raises(MnistlrError, match="image not found"):
        load_gray(tmp_path / "missing.png")
    whole = io.BytesIO()
    Image.new("L", (300, 300), 128).save(whole, "PNG", compress_level=0)
    (tmp_path / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(MnistlrError, match="not a readable image"):
        load_gray(tmp_path / "cut.png")


def png_header_only(path, width: int, height: int, colour: int = 0) -> None:
    """A PNG that declares width x height 8-bit pixels (colour type 0: gray, 2: RGB) but holds one row of
    data: decoding it would fail, so only a check of the declared size answers cleanly."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\xff" * width * (3 if colour == 2 else 1)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row))
        + chunk(b"IEND", b"")
    )


def test_huge_images_are_one_line_errors_before_decoding(tmp_path):
    png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 M pixels: PIL's decompression-bomb limit
    with pytest.raises(MnistlrError, match="too large to decode safely"):
        load_gray(tmp_path / "bomb.png")
    png_header_only(tmp_path / "wide.png", 9000, 9000, colour=2)  # 243 MB of RGB: over predict's own limit
    assert MAX_DATA_BYTES < 9000 * 9000 * 3
    with pytest.raises(MnistlrError, match=r"9000x9000 RGB image needs \d+ MB to decode"):
        load_gray(tmp_path / "wide.png")
    # a progressive JPEG is decoded from all its DCT coefficients, whatever size it is drawn at
    Image.new("RGB", (8000, 8000), "white").save(tmp_path / "big.jpg", quality=50, progressive=True)
    with pytest.raises(MnistlrError, match="8000x8000 RGB image needs"):
        load_gray(tmp_path / "big.jpg")


def run_predict_measured(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `mnistlr predict ARGS` from a fresh wrapper process: (result, seconds, peak RSS in MB of the
    predict process alone, read as RUSAGE_CHILDREN of a wrapper whose only child it is)."""
    exe = os.path.join(os.path.dirname(sys.executable), "mnistlr")
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps([p.returncode, p.stdout, p.stderr, dt, rss]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, exe, "predict", *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    code, stdout, stderr, seconds, rss = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), seconds, rss


@pytest.mark.parametrize("kind", ["blank", "digit"])
def test_a_large_image_costs_little_memory(tmp_path, kind):
    """8000x8000 pixels: decoded (64 MB) and reduced by Image.reduce before any float array exists; the
    whole predict process stays under 500 MB (converted to floats at full size it took gigabytes)."""
    random_model().save(tmp_path / "m.npz")
    img = Image.new("L", (8000, 8000), 255)
    if kind == "digit":
        ImageDraw.Draw(img).line([(4000, 800), (4000, 7200)], fill=0, width=700)
    img.save(tmp_path / f"{kind}.png", compress_level=1)
    del img
    res, seconds, rss = run_predict_measured([f"{kind}.png", "--model", "m.npz", "--json"], tmp_path)
    print(f"{kind} 8000x8000 PNG: {seconds:.2f} s, peak RSS {rss:.0f} MB")
    if kind == "blank":
        assert res.returncode == 1 and res.stderr.startswith("error: blank.png: blank image"), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    else:
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)[0]["image"] == "digit.png"
    assert rss < 500


def test_a_large_image_gives_the_answer_of_its_small_copy(tmp_path):
    """Reducing a large image before converting it must not change what predict sees."""
    small = Image.new("L", (100, 140), 255)
    ImageDraw.Draw(small).line([(20, 25), (80, 25), (40, 120)], fill=0, width=9)
    large = small.resize((2500, 3500), Image.Resampling.NEAREST)  # reduced by 4 to 625x875
    small.save(tmp_path / "small.png")
    large.save(tmp_path / "large.png")
    large.convert("RGB").save(tmp_path / "large.jpg", quality=95)  # JPEG: reduced while decoding (draft)
    expected = to_mnist(load_gray(tmp_path / "small.png"))
    for name in ("large.png", "large.jpg"):
        gray = load_gray(tmp_path / name)
        assert max(gray.shape) <= 1024, name
        assert np.abs(to_mnist(gray) - expected).mean() < 0.02, name


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
    for args, msg in (
        (["black.png", "--model", "m.npz"], "blank image"),
        (["nope.png", "--model", "m.npz"], "image not found"),
        (["one.png", "--model", "missing.npz"], "no model at missing.npz"),
        (["one.png", "--model", "junk.npz"], "not a model file"),
        (["one.png"], "no model at models/full.npz"),
    ):  # the default model path
        res = runner.invoke(app, ["predict", *args])
        assert res.exit_code == 1 and msg in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def _digit(path, x: int = 25) -> None:
    img = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(img).line([(x, 5), (x, 45)], fill=0, width=5)
    img.save(path)


def test_each_good_image_gets_its_answer_and_each_bad_one_an_error_line(tmp_path, monkeypatch):
    """As `file` and `grep` do: the good images are answered, in order, and each bad one is one line on stderr
    naming the file; the exit status is 1 when any failed."""
    monkeypatch.chdir(tmp_path)
    random_model().save(tmp_path / "m.npz")
    _digit(tmp_path / "a.png")
    _digit(tmp_path / "b.png", x=15)
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    res = runner.invoke(app, ["predict", "a.png", "blank.png", "b.png", "nope.png", "junk.png", "--model", "m.npz"])
    assert res.exit_code == 1
    answers = res.stdout.splitlines()
    assert [line.split(":")[0] for line in answers] == ["a.png", "b.png"], res.stdout
    assert all("[top 3: " in line for line in answers)
    errors = res.stderr.splitlines()
    assert [line.split(": ")[:2] for line in errors] == [
        ["error", "blank.png"],
        ["error", "nope.png"],
        ["error", "junk.png"],
    ], res.stderr
    assert errors[0].startswith("error: blank.png: blank image (no stroke differs")
    assert errors[1] == "error: nope.png: image not found"
    assert errors[2].startswith("error: junk.png: not a readable image (PNG or JPEG expected)")
    # the answers are those each good image gets alone
    alone = runner.invoke(app, ["predict", "b.png", "--model", "m.npz"])
    assert alone.exit_code == 0 and alone.stdout.splitlines() == answers[1:]
    # --json: one entry per image, in order, the bad ones with their reason; the errors also on stderr
    res = runner.invoke(app, ["predict", "a.png", "blank.png", "b.png", "--model", "m.npz", "--json"])
    data = json.loads(res.stdout)
    assert res.exit_code == 1 and [d["image"] for d in data] == ["a.png", "blank.png", "b.png"]
    assert "prediction" in data[0] and "prediction" in data[2] and data[1]["error"].startswith("blank image")
    assert res.stderr.startswith("error: blank.png: blank image")
    # all good: exit 0, nothing on stderr
    res = runner.invoke(app, ["predict", "a.png", "b.png", "--model", "m.npz"])
    assert res.exit_code == 0 and res.stderr == "" and len(res.stdout.splitlines()) == 2


def test_a_model_path_that_is_not_a_model_file_says_which_ones_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _digit(tmp_path / "a.png")
    (tmp_path / "models").mkdir()
    random_model().save(tmp_path / "models" / "frac10.npz")
    random_model().save(tmp_path / "models" / "full.npz")
    for model, message in (
        ("models/frac10", "error: models/frac10 not found; did you mean models/frac10.npz?"),
        (
            "models/frac5.npz",
            "error: no model at models/frac5.npz; models in models: models/frac10.npz, models/full.npz",
        ),
        ("models", "error: models is a folder, not a model file; models in it: models/frac10.npz, models/full.npz"),
        ("elsewhere/full.npz", "error: no model at elsewhere/full.npz; run the train stage first (dvc repro)"),
    ):
        res = runner.invoke(app, ["predict", "a.png", "--model", model])
        assert res.exit_code == 1 and res.stderr == message + "\n", res.stderr
    assert runner.invoke(app, ["predict", "a.png", "--model", "models/frac10.npz"]).exit_code == 0
    assert runner.invoke(app, ["predict", "a.png"]).exit_code == 0  # the default, models/full.npz


def test_predict_no_longer_accepts_params():
    res = runner.invoke(app, ["predict", "one.png", "--params", "params.yaml"])
    assert res.exit_code == 2 and "--params" in res.output


def draw_digit(path, strokes, size=(120, 160), width=12):
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for s in strokes:
        d.line(s, fill="black", width=width)
    img.save(path)


def load_fidelity_bench():
    """bench/predict_fidelity.py as a module: its quick model and its kinds of scanned digit."""
    spec = importlib.util.spec_from_file_location("predict_fidelity", REPO / "bench" / "predict_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fidelity():
    return load_fidelity_bench()


@pytest.fixture(scope="module")
def real_test_set(real_mirror):
    return (
        read_images(real_mirror / "t10k-images-idx3-ubyte.gz"),
        read_labels(real_mirror / "t10k-labels-idx1-ubyte.gz"),
    )


@pytest.fixture(scope="module")
def quick_model(real_mirror, fidelity) -> Model:
    """Multinomial logistic regression fitted in about a second: SGD, 2 epochs on the 60k training images."""
    return fidelity.quick_model(
        read_images(real_mirror / "train-images-idx3-ubyte.gz"), read_labels(real_mirror / "train-labels-idx1-ubyte.gz")
    )


@pytest.fixture(scope="module")
def real_model(quick_model, tmp_path_factory):
    """The quick model saved as the train stage saves it."""
    path = tmp_path_factory.mktemp("model") / "full.npz"
    quick_model.save(path)
    return path


@pytest.mark.slow
def test_the_mnist_test_set_through_predict_scores_as_fed_directly(
    quick_model, real_model, real_test_set, tmp_path, monkeypatch
):
    """All 10k test digits through predict's preprocessing (the path a decoded 28x28 PNG takes) against the
    same digits normalized directly; 300 of them as real PNG files through `mnistlr predict`."""
    images, labels = real_test_set
    x = np.stack([preprocess_gray(img, quick_model) for img in images])
    pixels = (x * quick_model.std + quick_model.mean).reshape(images.shape)
    changed = np.abs(pixels - images / 255.0).reshape(len(images), -1).max(1) > 1e-6
    assert changed.mean() <= 0.001, f"{changed.sum()} MNIST digits changed by preprocessing"
    through = quick_model.logits(x).argmax(1)
    direct = quick_model.logits(normalize(images, quick_model.mean, quick_model.std)).argmax(1)
    acc_through, acc_direct = 100 * (through == labels).mean(), 100 * (direct == labels).mean()
    print(f"10k MNIST test digits: {acc_through:.2f} % through predict, {acc_direct:.2f} % direct")
    assert acc_direct > 88
    assert abs(acc_through - acc_direct) <= 0.3
    monkeypatch.chdir(tmp_path)
    names = []
    for i in range(0, len(images), len(images) // 300):
        names.append(f"{i}.png")
        Image.fromarray(images[i]).save(names[-1])
    res = runner.invoke(app, ["predict", *names, "--model", str(real_model), "--json"])
    assert res.exit_code == 0, res.output
    from_files = [r["prediction"] for r in json.loads(res.output)]
    assert from_files == [int(through[int(n[:-4])]) for n in names]


@pytest.mark.slow
def test_a_deskewing_model_through_predict_scores_its_test_accuracy(fidelity, real_mirror, real_test_set, tmp_path):
    """A model trained on deskewed digits, fed 2000 raw (not deskewed) test digits as PNG files through
    predict, which applies the model's own deskewing: within 0.5 points of its accuracy on them."""
    model = fidelity.quick_model(
        read_images(real_mirror / "train-images-idx3-ubyte.gz"),
        read_labels(real_mirror / "train-labels-idx1-ubyte.gz"),
        deskew=True,
    )
    assert model.deskew and model.std < 0.3  # its own statistics: deskewing blurs a little
    images, labels = (a[:2000] for a in real_test_set)
    test_accuracy = 100 * (model.logits(model.preprocessing.apply(images)).argmax(1) == labels).mean()
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    model.save(tmp_path / "deskewed.npz")
    predicted = np.array([r["prediction"] for r in predict_files(paths, tmp_path / "deskewed.npz")])
    through = 100 * (predicted == labels).mean()
    plain = 100 * (model.logits(normalize(images, model.mean, model.std)).argmax(1) == labels).mean()
    print(
        f"deskewing quick model: test {test_accuracy:.2f} %, raw PNGs through predict {through:.2f} %, "
        f"raw pixels fed without deskewing {plain:.2f} %"
    )
    assert test_accuracy > 93  # deskewing is worth points even to a 2-epoch model
    assert abs(through - test_accuracy) <= 0.5
    assert plain < test_accuracy - 2  # skipping the model's deskew would cost points: predict must apply it


@pytest.mark.slow
def test_scans_and_photos_of_real_digits_score_close_to_direct(fidelity, quick_model, real_test_set):
    """500 real test digits per kind of file (dark ink on paper, a 200x200 page, off-centre, thick pen, thin
    pen, JPEG noise, and MNIST form) through predict's file path: each kind within 3 points of direct."""
    images, labels = real_test_set
    rows = fidelity.measure(quick_model, images, labels, dict.fromkeys(fidelity.KINDS, 500))
    print("\n" + fidelity.markdown(rows))
    assert [r["kind"] for r in rows] == list(fidelity.KINDS)
    worst = min(rows, key=lambda r: r["difference_points"])
    assert all(abs(r["difference_points"]) <= 3.0 for r in rows), worst
    assert next(r for r in rows if r["kind"] == "mnist")["difference_points"] == 0.0


@pytest.mark.slow
def test_the_fidelity_bench_chooses_on_validation_digits_and_reports_on_test_digits(
    fidelity, real_model, real_mirror, tmp_path, monkeypatch
):
    """The threshold is chosen on training images held out of training (the prepare stage's val split),
    never on test digits; the table is of the test digits, through predict as it is."""
    monkeypatch.setenv("MNISTLR_MNIST_DIR", str(real_mirror))
    chosen_on = []

    def spy(model, images, labels, kinds, **kwargs):
        chosen_on.append(images.copy())
        return real_select(model, images, labels, kinds, **kwargs)

    real_select = fidelity.select
    monkeypatch.setattr(fidelity, "select", spy)
    bench = runner.invoke(
        fidelity.app,
        [
            "--model",
            str(real_model),
            "--digits",
            "20",
            "--mnist-digits",
            "50",
            "--select-digits",
            "30",
            "--kind",
            "mnist",
            "--kind",
            "jpeg",
            "--out",
            str(tmp_path / "results"),
        ],
    )
    assert bench.exit_code == 0, bench.output
    assert "| mnist | 50 |" in bench.output and "| jpeg | 20 |" in bench.output
    train = read_images(real_mirror / "train-images-idx3-ubyte.gz")
    _, val_idx = split_indices(len(train), 10000, 42)  # params.yaml's val_size and seed
    assert len(chosen_on) == 1 and np.array_equal(chosen_on[0], train[val_idx[:30]])
    result = json.loads((tmp_path / "results" / "predict_fidelity.json").read_text())
    assert [(r["kind"], r["digits"]) for r in result["test"]["rows"]] == [("mnist", 50), ("jpeg", 20)]
    assert result["test"]["min_stroke"] == MIN_STROKE
    selection = result["selection"]
    assert selection["digits"] == 30 and [r["min_stroke"] for r in selection["rows"]] == list(fidelity.CANDIDATES)
    assert set(selection["rows"][0]) == {"min_stroke", "jpeg", "all"}  # mnist form is never resampled: not scored
    assert f"chosen: {selection['chosen']} px" in bench.output
    assert (tmp_path / "results" / "predict_fidelity.md").read_text() in bench.output


@pytest.mark.slow
def test_the_bench_chooses_the_threshold_that_gets_most_digits_right(fidelity, quick_model, real_mirror):
    """A pen widened to 8 px ruins digits and is not chosen; thresholds that widen nothing tie and the
    smallest wins."""
    train = read_images(real_mirror / "train-images-idx3-ubyte.gz")
    labels = read_labels(real_mirror / "train-labels-idx1-ubyte.gz")
    images, labels = train[:100], labels[:100]
    chosen, rows = fidelity.select(quick_model, images, labels, ["paper", "thin"], candidates=(8.0, MIN_STROKE))
    assert chosen == MIN_STROKE and rows[0]["all"] < rows[1]["all"] - 20
    assert rows[1]["all"] == pytest.approx((rows[1]["paper"] + rows[1]["thin"]) / 2)
    # 0.2 px is below any pen, so it widens nothing, as 0 does: the two tie
    chosen, rows = fidelity.select(quick_model, images, labels, ["thin"], candidates=(0.2, 0.0))
    assert chosen == 0.0 and rows[0]["thin"] == rows[1]["thin"]


def test_the_bench_scores_each_threshold_as_predict_preprocesses_its_files(fidelity, synthetic_mirror):
    """What the bench's selection computes for predict's own threshold is predict's preprocessing of the file."""
    images = read_images(synthetic_mirror / "train-images-idx3-ubyte.gz")[:3]
    model = random_model()
    for kind in fidelity.KINDS:
        for path in fidelity.files_of_kind(images, kind, 0, 1):
            via_bench = model.preprocessing.apply_float(to_mnist(load_gray(path), str(path), MIN_STROKE)[None])[0]
            np.testing.assert_array_equal(via_bench, preprocess_file(path, model))


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
    right = sum(r["prediction"] == y for r, y in zip(results, labels, strict=True))
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
