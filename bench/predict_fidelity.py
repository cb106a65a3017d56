"""Fidelity of `mnistlr predict`: real MNIST test digits written as image files, then classified through
predict's file path (decode + MNIST-style preprocessing), against the same digits fed directly.

Kinds of file, each built from real test digits:
  mnist      the digit itself, 28x28 white on black PNG (MNIST form: must pass through unchanged)
  paper      dark ink on white paper (inverted, grey paper and pen levels), a larger canvas, native scale
  large      a 200x200 page, the digit scaled up 4-6x
  offcentre  the digit at 2x, anywhere on a 128x96 page (mostly far from the centre)
  thick      a thick pen: the digit at 4x, grey dilation (5x5 max filter of the ink) on a 160x160 page
  thin       a thin pen: the digit at 4x, grey erosion (3x3 min filter of the ink) on a 160x160 page
  jpeg       the digit at 3x on a 120x120 page, saved as JPEG quality 75 (mild compression noise)

Run `python bench/predict_fidelity.py --help`. It trains a quick model (SGD, 2 epochs on the 60k
training images, CPU; torch is used for that only) unless --model names a models/<v>.npz. Prints a
markdown table; --out writes it as JSON. It measures; it asserts nothing (tests/test_predict.py does).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageFilter

from mnistlr import atomic
from mnistlr.data import MNIST_MEAN, MNIST_STD, Preprocessing, locate, pixel_stats, read_images, read_labels
from mnistlr.model import Model, load_model
from mnistlr.predict import preprocess_file

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def quick_model(images: np.ndarray, labels: np.ndarray, epochs: int = 2, seed: int = 0, deskew: bool = False) -> Model:
    """Multinomial logistic regression fitted in seconds on the CPU (SGD lr 0.1, batch 128, cosine decay),
    as the train stage would save it: on plain pixels normalized with MNIST's 0.1307 / 0.3081, or (deskew)
    on deskewed pixels normalized with their own statistics."""
    import torch

    from mnistlr.params import TrainParams
    from mnistlr.train import fit

    pre = Preprocessing(False, MNIST_MEAN, MNIST_STD)
    if deskew:
        pre = Preprocessing(True, *pixel_stats(Preprocessing(True, 0.0, 1.0).pixels(images)))
    x = torch.from_numpy(pre.apply(images))
    y = torch.from_numpy(labels.astype(np.int64))
    cfg = TrainParams(epochs=epochs, batch_size=128, device="cpu")
    model, _ = fit(x, y, x[:100], y[:100], cfg, "sgd", 0.1, seed)
    return model.to_model(pre)


# --- kinds of file -------------------------------------------------------------------------------


def _on_paper(ink: Image.Image, size: tuple[int, int], at: tuple[int, int], paper: float, pen: float) -> Image.Image:
    """White-on-black ink (L image) as dark pen on light paper: a page of `size` (w, h), ink pasted at `at`."""
    page = np.zeros((size[1], size[0]))
    a = np.asarray(ink, dtype=np.float64) / 255
    page[at[1] : at[1] + a.shape[0], at[0] : at[0] + a.shape[1]] = a
    return Image.fromarray(np.round(paper - (paper - pen) * page).astype(np.uint8))


def _scaled(img: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC)


def _random_at(rng: np.random.Generator, page: tuple[int, int], side: int) -> tuple[int, int]:
    return int(rng.integers(0, page[0] - side + 1)), int(rng.integers(0, page[1] - side + 1))


def _mnist(img, rng):
    return Image.fromarray(img), ".png", {}


def _paper(img, rng):
    side = int(rng.integers(36, 65))
    at = _random_at(rng, (side, side), 28)
    return _on_paper(Image.fromarray(img), (side, side), at, rng.uniform(215, 255), rng.uniform(0, 60)), ".png", {}


def _large(img, rng):
    side = int(rng.integers(112, 169))
    at = (100 - side // 2 + int(rng.integers(-12, 13)), 100 - side // 2 + int(rng.integers(-12, 13)))
    return _on_paper(_scaled(img, side), (200, 200), at, 250, 10), ".png", {}


def _offcentre(img, rng):
    return _on_paper(_scaled(img, 56), (128, 96), _random_at(rng, (128, 96), 56), 245, 15), ".png", {}


def _thick(img, rng):
    ink = _scaled(img, 112).filter(ImageFilter.MaxFilter(5))  # grey dilation: 1 px more stroke at 28x28 scale
    return _on_paper(ink, (160, 160), _random_at(rng, (160, 160), 112), 245, 15), ".png", {}


def _thin(img, rng):
    ink = _scaled(img, 112).filter(ImageFilter.MinFilter(3))  # grey erosion: 0.5 px less stroke at 28x28 scale
    return _on_paper(ink, (160, 160), _random_at(rng, (160, 160), 112), 245, 15), ".png", {}


def _jpeg(img, rng):
    return _on_paper(_scaled(img, 84), (120, 120), _random_at(rng, (120, 120), 84), 240, 20), ".jpg", {"quality": 75}


# name -> (digit uint8 [28, 28], rng) -> (PIL image, file suffix, save options)
KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[Image.Image, str, dict]]] = {
    "mnist": _mnist, "paper": _paper, "large": _large, "offcentre": _offcentre,
    "thick": _thick, "thin": _thin, "jpeg": _jpeg,
}


def measure(model: Model, images: np.ndarray, labels: np.ndarray, counts: dict[str, int], seed: int = 0) -> list[dict]:
    """For each kind: write the first `count` test digits as files of that kind (into a temp folder),
    classify them through predict's file path, and compare with the same digits fed directly."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (kind, count) in enumerate(counts.items()):
            make = KINDS[kind]
            x_direct = model.preprocessing.apply(images[:count])
            direct = float((model.logits(x_direct).argmax(1) == labels[:count]).mean())
            start = time.perf_counter()
            x = []
            for i in range(count):
                img, suffix, options = make(images[i], np.random.default_rng([seed, k, i]))
                path = Path(tmp) / f"{kind}-{i}{suffix}"
                img.save(path, **options)
                x.append(preprocess_file(path, model))
                path.unlink()
            seconds = time.perf_counter() - start
            through = float((model.logits(np.stack(x)).argmax(1) == labels[:count]).mean())
            rows.append({"kind": kind, "digits": count, "predict_accuracy": round(100 * through, 2),
                         "direct_accuracy": round(100 * direct, 2),
                         "difference_points": round(100 * (through - direct), 2),
                         "ms_per_image": round(1000 * seconds / count, 2)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| kind | digits | through predict (%) | direct (%) | difference (points) |",
             "|:--|--:|--:|--:|--:|"]
    lines += [f"| {r['kind']} | {r['digits']} | {r['predict_accuracy']:.2f} | {r['direct_accuracy']:.2f} | "
              f"{r['difference_points']:+.2f} |" for r in rows]
    return "\n".join(lines)


@app.command()
def main(
    model_path: Path = typer.Option(None, "--model",
                                    help="a model .npz (e.g. models/full.npz); default: train a quick one"),
    digits: int = typer.Option(1000, help="test digits per kind (the first N of the 10k test set)"),
    mnist_digits: int = typer.Option(10000, help="test digits for the 'mnist' kind"),
    kinds: list[str] = typer.Option(list(KINDS), "--kind", help=f"kinds to measure: {', '.join(KINDS)}"),
    out: Path = typer.Option(None, help="write the rows as JSON here"),
    seed: int = typer.Option(0, help="seed of the quick model and of the kinds' random placement"),
    deskew: bool = typer.Option(False, help="train the quick model on deskewed digits (a --model says for itself)"),
) -> None:
    """Print predict's accuracy on image files of each kind against feeding the same digits directly."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kind {', '.join(unknown)}; accepted: {', '.join(KINDS)}")
    files = locate()
    images = read_images(files["t10k-images-idx3-ubyte.gz"])
    labels = read_labels(files["t10k-labels-idx1-ubyte.gz"])
    if model_path is None:
        model = quick_model(read_images(files["train-images-idx3-ubyte.gz"]),
                            read_labels(files["train-labels-idx1-ubyte.gz"]), seed=seed, deskew=deskew)
        source = (f"quick model: SGD lr 0.1, batch 128, 2 epochs on 60k {'deskewed ' if deskew else ''}"
                  f"training images, seed {seed}")
    else:
        model, source = load_model(model_path), str(model_path)
    counts = {k: min(mnist_digits if k == "mnist" else digits, len(images)) for k in kinds}
    rows = measure(model, images, labels, counts, seed)
    typer.echo(f"model: {source}; inputs: {model.preprocessing.describe()}\n")
    typer.echo(markdown(rows))
    worst = min(rows, key=lambda r: r["difference_points"])
    typer.echo(f"\nworst kind: {worst['kind']} ({worst['difference_points']:+.2f} points); "
               f"ms per image: " + ", ".join(f"{r['kind']} {r['ms_per_image']}" for r in rows))
    if out is not None:
        atomic.write_json(out, {"model": source, "rows": rows})
        typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
