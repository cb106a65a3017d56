"""Fidelity of `mnistlr predict`, and the choice of its thin-pen threshold (predict.MIN_STROKE).

Real MNIST digits are written as image files of several kinds and classified through predict's file
path (decode + MNIST-style preprocessing), against the same digits fed directly.

Kinds of file, each built from real digits:
  mnist      the digit itself, 28x28 white on black PNG (MNIST form: must pass through unchanged)
  paper      dark ink on white paper (inverted, grey paper and pen levels), a larger canvas, native scale
  large      a 200x200 page, the digit scaled up 4-6x
  offcentre  the digit at 2x, anywhere on a 128x96 page (mostly far from the centre)
  thick      a thick pen: the digit at 4x, grey dilation (5x5 max filter of the ink) on a 160x160 page
  thin       a thin pen: the digit at 4x, grey erosion (3x3 min filter of the ink) on a 160x160 page
  jpeg       the digit at 3x on a 120x120 page, saved as JPEG quality 75 (mild compression noise)

Two steps, on disjoint digits:
  select  on the validation digits: the MNIST training images the prepare stage holds out of training
          (data.split_indices with params.yaml's seed 42 and data.val_size 10000). Each candidate
          thin-pen threshold (0, never widen, and 1.0 to 3.0 px in 0.1 steps) preprocesses the same files;
          the one with the most digits right over the kinds it can change (all but mnist, which is never
          resampled) is chosen, the smallest on a tie. predict.MIN_STROKE is set to it by hand.
  report  on the MNIST test digits, predict as it is (predict.MIN_STROKE): the fidelity table.
The test digits choose nothing.

Run `python bench/predict_fidelity.py --help`. It trains a quick model (SGD, 2 epochs on the 50k
training split, CPU; torch is used for that only) unless --model names a models/<v>.npz (the train
stage fits those on the same 50k). Prints markdown; with --out FOLDER it also writes it, with the rows as
JSON, to FOLDER/predict_fidelity.{md,json} (the committed results: --out bench/results). It measures; it
asserts nothing (tests/test_predict.py does).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageFilter

from mnistlr import atomic, predict
from mnistlr.data import (
    MNIST_MEAN,
    MNIST_STD,
    Preprocessing,
    file_md5,
    locate,
    pixel_stats,
    read_images,
    read_labels,
    split_indices,
)
from mnistlr.model import Model, load_model
from mnistlr.predict import load_gray, preprocess_file, stroke_width, to_mnist

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

CANDIDATES = (0.0, *(round(1.0 + 0.1 * i, 1) for i in range(21)))  # thin-pen thresholds tried (px)
SPLIT_SEED, VAL_SIZE = 42, 10000  # params.yaml's seed and data.val_size: the prepare stage's split


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
    "mnist": _mnist,
    "paper": _paper,
    "large": _large,
    "offcentre": _offcentre,
    "thick": _thick,
    "thin": _thin,
    "jpeg": _jpeg,
}
ALL_KINDS = list(KINDS)
KIND_NAMES = ", ".join(KINDS)


def files_of_kind(images: np.ndarray, kind: str, seed: int, *stream: int) -> Iterator[Path]:
    """Each digit written as a file of `kind` (in a temp folder, removed once the next is asked for);
    the placement of digit i is seeded by (seed, the kind's place in KINDS, i, *stream)."""
    make, k = KINDS[kind], list(KINDS).index(kind)
    with tempfile.TemporaryDirectory() as tmp:
        for i, digit in enumerate(images):
            img, suffix, options = make(digit, np.random.default_rng([seed, k, i, *stream]))
            path = Path(tmp) / f"{kind}-{i}{suffix}"
            img.save(path, **options)
            yield path
            path.unlink()


def direct_accuracy(model: Model, images: np.ndarray, labels: np.ndarray) -> float:
    return float((model.logits(model.preprocessing.apply(images)).argmax(1) == labels).mean())


def measure(model: Model, images: np.ndarray, labels: np.ndarray, counts: dict[str, int], seed: int = 0) -> list[dict]:
    """For each kind: write the first `count` digits as files of that kind, classify them through
    predict's file path (predict.preprocess_file, with predict.MIN_STROKE), and compare with the same
    digits fed directly."""
    rows = []
    for kind, count in counts.items():
        direct = direct_accuracy(model, images[:count], labels[:count])
        start = time.perf_counter()
        x = np.stack([preprocess_file(path, model) for path in files_of_kind(images[:count], kind, seed)])
        seconds = time.perf_counter() - start
        through = float((model.logits(x).argmax(1) == labels[:count]).mean())
        rows.append(
            {
                "kind": kind,
                "digits": count,
                "predict_accuracy": round(100 * through, 2),
                "direct_accuracy": round(100 * direct, 2),
                "difference_points": round(100 * (through - direct), 2),
                "ms_per_image": round(1000 * seconds / count, 2),
            }
        )
    return rows


def select(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    kinds: list[str],
    candidates: tuple[float, ...] = CANDIDATES,
    seed: int = 0,
) -> tuple[float, list[dict]]:
    """The thin-pen threshold, of `candidates`, that gets the most of these digits right through predict
    over `kinds` (the smallest on a tie), and a row per candidate: its accuracy (%) per kind and overall.
    Each file is decoded once and preprocessed as predict does with each candidate in turn."""
    right = {kind: np.zeros(len(candidates), np.int64) for kind in kinds}
    for kind in kinds:
        for path, label in zip(files_of_kind(images, kind, seed, 1), labels, strict=True):
            gray = load_gray(path)
            x = np.stack([model.preprocessing.apply_float(to_mnist(gray, str(path), m)[None])[0] for m in candidates])
            right[kind] += model.logits(x).argmax(1) == label
    total = sum(right.values())
    chosen = min(m for m, t in zip(candidates, total, strict=True) if t == total.max())
    rows = [
        {
            "min_stroke": m,
            **{kind: round(100 * int(right[kind][c]) / len(images), 2) for kind in kinds},
            "all": round(100 * int(total[c]) / (len(images) * len(kinds)), 2),
        }
        for c, m in enumerate(candidates)
    ]
    return chosen, rows


def markdown(rows: list[dict]) -> str:
    lines = ["| kind | digits | through predict (%) | direct (%) | difference (points) |", "|:--|--:|--:|--:|--:|"]
    lines += [
        f"| {r['kind']} | {r['digits']} | {r['predict_accuracy']:.2f} | {r['direct_accuracy']:.2f} | "
        f"{r['difference_points']:+.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def selection_markdown(rows: list[dict], chosen: float) -> str:
    kinds = [k for k in rows[0] if k not in ("min_stroke", "all")]
    lines = ["| min_stroke (px) | " + " | ".join(kinds) + " | all |", "|--:|" + "--:|" * (len(kinds) + 1)]
    for r in rows:
        mark = " (chosen)" if r["min_stroke"] == chosen else ""
        lines.append(
            f"| {r['min_stroke']:.1f}{mark} | " + " | ".join(f"{r[k]:.2f}" for k in kinds) + f" | {r['all']:.2f} |"
        )
    return "\n".join(lines)


@app.command()
def main(
    model_path: Path = typer.Option(
        None,
        "--model",
        help="a model .npz trained on the 50k training split (e.g. models/full.npz); default: train a quick one on it",
    ),
    digits: int = typer.Option(1000, help="test digits per kind in the report (the first N of the 10k test set)"),
    mnist_digits: int = typer.Option(10000, help="test digits for the 'mnist' kind in the report"),
    select_digits: int = typer.Option(
        5000, help="validation digits per kind that choose the thin-pen threshold (0: choose nothing, report only)"
    ),
    kinds: list[str] = typer.Option(ALL_KINDS, "--kind", help=f"kinds to measure: {KIND_NAMES}"),
    out: Path | None = typer.Option(
        None, help="also write predict_fidelity.md and predict_fidelity.json into this folder (e.g. bench/results)"
    ),
    seed: int = typer.Option(0, help="seed of the quick model and of the kinds' random placement"),
    deskew: bool = typer.Option(False, help="train the quick model on deskewed digits (a --model says for itself)"),
) -> None:
    """Choose predict's thin-pen threshold on held-out training digits, then print and write predict's
    accuracy on test-digit files of each kind against feeding the same digits directly."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kind {', '.join(unknown)}; accepted: {', '.join(KINDS)}")
    files = locate()
    train_images = read_images(files["train-images-idx3-ubyte.gz"])
    train_labels = read_labels(files["train-labels-idx1-ubyte.gz"])
    train_idx, val_idx = split_indices(len(train_images), VAL_SIZE, SPLIT_SEED)
    if model_path is None:
        model = quick_model(train_images[train_idx], train_labels[train_idx], seed=seed, deskew=deskew)
        source = (
            f"quick model: SGD lr 0.1, batch 128, 2 epochs on the 50k {'deskewed ' if deskew else ''}"
            f"training split, seed {seed}"
        )
    else:
        model, source = load_model(model_path), f"{model_path} (md5 {file_md5(model_path)})"
    report = [f"model: {source}; inputs: {model.preprocessing.describe()}", ""]
    result: dict = {"model": source}

    strokes = np.array([stroke_width(img >= 128) for img in train_images[train_idx]])
    report.append(
        f"MNIST's pen (training split, ink >= 50 %): median stroke {np.median(strokes):.2f} px, "
        f"{100 * (strokes < predict.MIN_STROKE).mean():.1f} % of digits under {predict.MIN_STROKE} px"
    )
    resampled = [k for k in kinds if k != "mnist"]
    if select_digits > 0 and resampled:
        n = min(select_digits, len(val_idx))
        chosen, choice = select(model, train_images[val_idx[:n]], train_labels[val_idx[:n]], resampled, seed=seed)
        agrees = "matches it" if chosen == predict.MIN_STROKE else "DIFFERS: set predict.MIN_STROKE to the chosen value"
        report += [
            "",
            f"## Thin-pen threshold, chosen on {n} validation digits per kind "
            f"(training images held out of training: seed {SPLIT_SEED}, val_size {VAL_SIZE})",
            "",
            "accuracy (%) through predict, direct "
            f"{100 * direct_accuracy(model, train_images[val_idx[:n]], train_labels[val_idx[:n]]):.2f}:",
            "",
            selection_markdown(choice, chosen),
            "",
            f"chosen: {chosen} px; predict.MIN_STROKE = {predict.MIN_STROKE} {agrees}",
        ]
        result["selection"] = {
            "digits": n,
            "split_seed": SPLIT_SEED,
            "val_size": VAL_SIZE,
            "chosen": chosen,
            "predict_min_stroke": predict.MIN_STROKE,
            "rows": choice,
        }
    test_images = read_images(files["t10k-images-idx3-ubyte.gz"])
    test_labels = read_labels(files["t10k-labels-idx1-ubyte.gz"])
    counts = {k: min(mnist_digits if k == "mnist" else digits, len(test_images)) for k in kinds}
    rows = measure(model, test_images, test_labels, counts, seed)
    worst = min(rows, key=lambda r: r["difference_points"])
    report += [
        "",
        f"## Fidelity on the MNIST test digits (predict.MIN_STROKE = {predict.MIN_STROKE})",
        "",
        markdown(rows),
        "",
        f"worst kind: {worst['kind']} ({worst['difference_points']:+.2f} points); ms per image: "
        + ", ".join(f"{r['kind']} {r['ms_per_image']}" for r in rows),
    ]
    result["test"] = {"min_stroke": predict.MIN_STROKE, "rows": rows}
    text = "\n".join(report) + "\n"
    typer.echo(text, nl=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "predict_fidelity.json", result)
        atomic.write_text(out / "predict_fidelity.md", text)
        typer.echo(f"wrote {out / 'predict_fidelity.md'} and {out / 'predict_fidelity.json'}")


if __name__ == "__main__":
    app()
