"""The studies (studies/dvc.yaml, a DVC project of its own): baselines and limits of the linear model, and their report.

mse      - linear regression (least squares on one-hot targets) beside logistic regression
optimum  - full-batch L-BFGS minimum of the regularized objective vs SGD/Adam after N epochs
l1l2     - test accuracy and weight sparsity, L1 against L2 over the same strengths
sweep    - the best linear model, chosen on validation accuracy only, refitted on train + val
deskew   - the same selection on deskewed digits (studies/data/prepared_deskewed)

Each study is one process looping over its grid (one `import torch` instead of one per run) and
writes a small JSON; mnistlr.studies_page turns them into studies/report.md (without torch, so its stage
starts fast). Candidates that share an optimizer, batch size and epochs train together as one batched program
(train.fit_batched).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mnistlr import atomic, metrics
from mnistlr.data import NUM_CLASSES, load_preprocessing, load_split
from mnistlr.errors import MnistlrError
from mnistlr.params import Params, SweepPoint, TrainParams
from mnistlr.studies_page import LBFGS_CHUNK, STUDIES
from mnistlr.train import (
    LogisticRegression,
    batchable,
    fit,
    fit_batched,
    objective_value,
    predict_logits,
    resolve_device,
    to_device,
)


def _data(prepared: str | Path, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {s: tuple(to_device(device, *load_split(prepared, s))) for s in ("train", "val", "test")}


def _accuracy(model: LogisticRegression, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(metrics.accuracy(predict_logits(model, x).cpu().numpy(), y.cpu().numpy()), 6)


def _cfg(params: Params, **train) -> TrainParams:
    """params.train with `train` overridden, validated."""
    return TrainParams.model_validate(params.train.model_copy(update=train).model_dump())


def _row(model: LogisticRegression, data: dict, cfg: TrainParams, optimizer: str, lr: float, splits, **extra) -> dict:
    """A fitted model's settings, training objective and accuracies, as one JSON row (printed as it goes)."""
    x, y = data["train"]
    row = {
        "optimizer": optimizer,
        "lr": lr,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "l1": cfg.l1,
        "loss": cfg.loss,
        "objective": round(objective_value(model, x, y, cfg.loss, cfg.l1, cfg.weight_decay), 6),
        "train_accuracy": _accuracy(model, x, y),
    }
    for s in splits:
        row[f"{s}_accuracy"] = _accuracy(model, *data[s])
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def _run(
    params: Params, data: dict, optimizer: str, lr: float, *, splits=("val", "test"), **train
) -> tuple[LogisticRegression, dict]:
    """Fit on train with params.train overridden by `train`; accuracies, objective and timing."""
    cfg = _cfg(params, **train)
    model, _ = fit(*data["train"], *data["val"], cfg, optimizer, lr, params.seed)
    return model, _row(model, data, cfg, optimizer, lr, splits)


def _run_candidates(
    params: Params, data: dict, points: list[SweepPoint], splits=("val",)
) -> tuple[list[LogisticRegression], list[dict]]:
    """The fitted model and its row for each candidate, in order. Candidates sharing optimizer, batch size
    and epochs train as one batched program (`batched`: K)."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(points):
        groups.setdefault((c.optimizer, c.batch_size, c.epochs), []).append(i)
    models: list[LogisticRegression | None] = [None] * len(points)
    rows: list[dict] = [{}] * len(points)
    for (optimizer, batch_size, epochs), idx in groups.items():
        cfg = _cfg(params, epochs=epochs, batch_size=batch_size)
        if len(idx) == 1 or not batchable(cfg, optimizer):
            for i in idx:
                models[i], rows[i] = _run(
                    params,
                    data,
                    optimizer,
                    points[i].lr,
                    splits=splits,
                    epochs=epochs,
                    batch_size=batch_size,
                    weight_decay=points[i].weight_decay,
                )
            continue
        fitted = fit_batched(
            *data["train"],
            cfg,
            optimizer,
            [points[i].lr for i in idx],
            [points[i].weight_decay for i in idx],
            params.seed,
        )
        for i, model in zip(idx, fitted, strict=True):
            models[i] = model
            rows[i] = _row(
                model,
                data,
                _cfg(params, epochs=epochs, batch_size=batch_size, weight_decay=points[i].weight_decay),
                optimizer,
                points[i].lr,
                splits,
                batched=len(idx),
            )
    return models, rows


def study_mse(params: Params, data: dict) -> dict:
    """Least squares (SGD on the MSE loss, and the exact normal-equation solution) beside cross-entropy."""
    p = params.studies.mse
    _, mse = _run(params, data, "sgd", p.lr, epochs=p.epochs, loss="mse")
    x, y = data["train"]
    # exact least squares: [X 1] W = onehot(y), in float64
    a = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1).double()
    t = torch.nn.functional.one_hot(y, NUM_CLASSES).double()
    sol = torch.linalg.lstsq(a.cpu(), t.cpu()).solution.to(x.device)
    exact = LogisticRegression().to(x.device)
    with torch.no_grad():
        exact.fc.weight.copy_(sol[:-1].T.float())
        exact.fc.bias.copy_(sol[-1].float())
    closed = {
        "optimizer": "lstsq (closed form)",
        "loss": "mse",
        "objective": round(objective_value(exact, x, y, "mse"), 6),
        "train_accuracy": _accuracy(exact, x, y),
        "val_accuracy": _accuracy(exact, *data["val"]),
        "test_accuracy": _accuracy(exact, *data["test"]),
    }
    # the logistic-regression run with the same SGD settings is the optimum study's weight_decay 0 row
    return {"linear_regression_sgd": mse, "linear_regression_exact": closed}


def study_optimum(params: Params, data: dict) -> dict:
    """Per weight decay: the L-BFGS optimum, and SGD/Adam (their default lr) measured against it."""
    p = params.studies.optimum
    optima = [
        _run(
            params,
            data,
            "lbfgs",
            params.train.lr.lbfgs,
            epochs=max(1, p.lbfgs_iters // LBFGS_CHUNK),
            lbfgs_iters=LBFGS_CHUNK,
            weight_decay=wd,
        )[1]
        for wd in p.weight_decays
    ]
    names = ("sgd", "adam")
    points = [
        SweepPoint(
            optimizer=name,
            lr=getattr(params.train.lr, name),
            epochs=p.epochs,
            batch_size=params.train.batch_size,
            weight_decay=wd,
        )
        for wd in p.weight_decays
        for name in names
    ]
    runs = iter(_run_candidates(params, data, points, splits=("val", "test"))[1])
    rows = []
    for wd, opt in zip(p.weight_decays, optima, strict=True):
        entry = {"weight_decay": wd, "lbfgs": opt}
        for name in names:
            r = next(runs)
            r["objective_gap"] = round(r["objective"] - opt["objective"], 6)
            r["val_accuracy_gap"] = round(r["val_accuracy"] - opt["val_accuracy"], 6)
            r["test_accuracy_gap"] = round(r["test_accuracy"] - opt["test_accuracy"], 6)
            entry[name] = r
        rows.append(entry)
    return {"rows": rows, "n_train": int(data["train"][1].shape[0])}


def study_l1l2(params: Params, data: dict, figure: str | Path | None = None) -> dict:
    """SGD with each strength as L1, then as L2, trained as one batched program; sparsity = share of
    |w| < evaluate.sparsity_threshold."""
    p = params.studies.l1l2
    thr = params.evaluate.sparsity_threshold
    # the unregularized run is the l1 = 0 one
    runs = [(kind, v) for kind in ("l1", "weight_decay") for v in p.values if not (v == 0 and kind == "weight_decay")]
    base = _cfg(params, epochs=p.epochs, batch_size=p.batch_size)
    cfgs = [_cfg(params, epochs=p.epochs, batch_size=p.batch_size, **{kind: v}) for kind, v in runs]
    if batchable(base, "sgd"):
        models = fit_batched(
            *data["train"],
            base,
            "sgd",
            [p.lr] * len(runs),
            [c.weight_decay for c in cfgs],
            params.seed,
            l1s=[c.l1 for c in cfgs],
        )
    else:
        models = [fit(*data["train"], *data["val"], c, "sgd", p.lr, params.seed)[0] for c in cfgs]
    rows, strongest = [], {}
    for (kind, v), c, model in zip(runs, cfgs, models, strict=True):
        r = _row(model, data, c, "sgd", p.lr, ("val", "test"), batched=len(runs))
        w = model.fc.weight.detach().cpu()
        r.update(
            penalty=kind if v else "none",
            strength=v,
            sparsity=round(metrics.weight_sparsity(w.numpy(), thr), 6),
            exact_zeros=round(float((w == 0).float().mean()), 6),
            l1_norm=round(float(w.abs().sum()), 3),
            l2_norm=round(float(w.norm()), 3),
        )
        rows.append(r)
        if v == max(p.values):
            strongest[kind] = w
    if figure is not None and len(strongest) == 2:
        from mnistlr import figures

        fig = figures.weight_rows_figure(
            {
                f"L1 = {max(p.values):g}": strongest["l1"].numpy(),
                f"L2 = {max(p.values):g}": strongest["weight_decay"].numpy(),
            },
            title="Per-class weights: L1 (top) vs L2 (bottom) at the same strength; white = 0",
        )
        figures.save(fig, figure)
    return {"sparsity_threshold": thr, "rows": rows}


def best_linear(
    params: Params, data: dict, candidates: list[SweepPoint], refit: bool, reused: list[tuple[dict, dict]] = ()
) -> dict:
    """Score every candidate (and `reused` (row without test, row with test) pairs fitted elsewhere on the
    same data) on validation; train the winner on train (unless reused), refit it on train + val, test once."""
    models, rows = _run_candidates(params, data, candidates)
    fitted = []  # already fitted (same seed and data): reused, their test numbers hidden from the selection
    for row, full in reused:
        rows.append(row)
        fitted.append(full)
    best = max(range(len(rows)), key=lambda i: rows[i]["val_accuracy"])  # first of equals
    b = rows[best]
    point = SweepPoint(
        optimizer=b["optimizer"],
        lr=b["lr"],
        epochs=b["epochs"],
        batch_size=b["batch_size"],
        weight_decay=b["weight_decay"],
    )
    overrides = dict(epochs=point.epochs, batch_size=point.batch_size, weight_decay=point.weight_decay)
    if point.optimizer == "lbfgs":
        overrides["lbfgs_iters"] = LBFGS_CHUNK  # as in the optimum study: `epochs` chunks of LBFGS_CHUNK iterations
    n_new = len(candidates)
    if best >= n_new:  # the optimum study already trained it on train and tested it once
        on_train = fitted[best - n_new]
    else:  # the selected model itself, now scored on the test set once
        on_train = {**b, "test_accuracy": _accuracy(models[best], *data["test"])}
    result = {
        "rows": rows,
        "best_index": best,
        "best": point.model_dump(),
        "trained_on_train": on_train,
        "n_train": int(data["train"][1].shape[0]),
        "n_val": int(data["val"][1].shape[0]),
    }
    if refit:
        both = {
            "train": (torch.cat([data["train"][0], data["val"][0]]), torch.cat([data["train"][1], data["val"][1]])),
            "val": data["val"],
            "test": data["test"],
        }
        _, result["refit_on_train_val"] = _run(params, both, point.optimizer, point.lr, splits=("test",), **overrides)
    return result


def study_sweep(params: Params, data: dict, optimum: dict) -> dict:
    """Every candidate (and the optimum study's runs, L-BFGS optima included) scored on validation; the
    winner refitted and tested once."""
    reused = []
    for entry in optimum["rows"]:
        for name in ("lbfgs", "sgd", "adam"):
            r = {k: v for k, v in entry[name].items() if not k.endswith("_gap") and k != "test_accuracy"}
            r["from"] = "optimum study"
            reused.append((r, entry[name]))
    return best_linear(params, data, params.studies.sweep.candidates, params.studies.sweep.refit, reused)


def study_deskew(params: Params, data: dict) -> dict:
    """The best linear model on deskewed digits, chosen the same way (validation only, then one test)."""
    return best_linear(params, data, params.studies.deskew.candidates, params.studies.deskew.refit)


def run_study(
    name: str,
    params: Params,
    prepared: str | Path,
    out: str | Path,
    figure: str | Path | None = None,
    optimum: str | Path | None = None,
) -> dict:
    """Run one study and write its JSON."""
    if name not in STUDIES:
        raise MnistlrError(f"unknown study {name!r}; accepted: {', '.join(STUDIES)}")
    # The studies' small matrix products: on a shared 2-core machine one thread ran SGD 2.4x faster than two.
    torch.set_num_threads(1)
    torch.manual_seed(params.seed)
    pre = load_preprocessing(prepared)
    if pre.deskew != (name == "deskew"):
        raise MnistlrError(
            f"study {name!r} needs {'deskewed' if name == 'deskew' else 'plain'} inputs, but {prepared} "
            f"holds inputs with {pre.describe()}; accepted: --prepared "
            f"{'data/prepared_deskewed' if name == 'deskew' else '../data/prepared'} (from studies/, where it runs)"
        )
    data = _data(prepared, resolve_device(params.train.device))
    if name == "mse":
        result = study_mse(params, data)
    elif name == "optimum":
        result = study_optimum(params, data)
    elif name == "l1l2":
        result = study_l1l2(params, data, figure)
    elif name == "sweep":
        if optimum is None or not Path(optimum).is_file():
            raise MnistlrError(f"the sweep needs the optimum study's JSON; not found: {optimum}")
        result = study_sweep(params, data, json.loads(Path(optimum).read_text()))
    elif name == "deskew":
        result = study_deskew(params, data)
    result = {
        "study": name,
        "params": params.studies.model_dump()[name],
        "device": str(data["train"][0].device),
        "preprocessing": pre.describe(),
        **result,
    }
    atomic.write_json(out, result)
    return result
