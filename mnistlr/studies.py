"""The studies pipeline (studies/dvc.yaml): baselines and limits of the linear model.

mse      - linear regression (least squares on one-hot targets) beside logistic regression
optimum  - full-batch L-BFGS minimum of the regularized objective vs SGD/Adam after N epochs
l1l2     - test accuracy and weight sparsity, L1 against L2 over the same strengths
sweep    - the best linear model, chosen on validation accuracy only, refitted on train + val

Each study is one process looping over its grid (one `import torch` instead of one per run) and
writes a small JSON; `report` turns them into reports/studies.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mnistlr import atomic
from mnistlr.device import resolve_device
from mnistlr.errors import MnistlrError
from mnistlr.evaluation import predict_logits, weight_sparsity
from mnistlr.losses import objective_value
from mnistlr.model import LogisticRegression
from mnistlr.params import Params, SweepPoint, TrainParams
from mnistlr.prepare import load_split
from mnistlr.trainer import fit

STUDIES = ("mse", "optimum", "l1l2", "sweep")


def _data(prepared: str | Path, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {s: load_split(prepared, s, device) for s in ("train", "val", "test")}


def _accuracy(model: LogisticRegression, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(float((predict_logits(model, x).argmax(1) == y).float().mean()), 6)


def _run(params: Params, data: dict, optimizer: str, lr: float, *, splits=("val", "test"), **train) -> tuple[LogisticRegression, dict]:
    """Fit on train with params.train overridden by `train`; accuracies, objective and timing."""
    cfg = params.train.model_copy(update=train)
    cfg = TrainParams.model_validate(cfg.model_dump())  # validate the overrides
    x, y = data["train"]
    t0 = time.perf_counter()
    model, history = fit(x, y, *data["val"], cfg, optimizer, lr, params.seed)
    row = {
        "optimizer": optimizer, "lr": lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay, "l1": cfg.l1, "loss": cfg.loss,
        "objective": round(objective_value(model, x, y, cfg.loss, cfg.l1, cfg.weight_decay), 6),
        "train_accuracy": _accuracy(model, x, y),
    }
    for s in splits:
        row[f"{s}_accuracy"] = _accuracy(model, *data[s])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    return model, row


def study_mse(params: Params, data: dict) -> dict:
    """Least squares (SGD on the MSE loss, and the exact normal-equation solution) beside cross-entropy."""
    p = params.studies.mse
    _, mse = _run(params, data, "sgd", p.lr, epochs=p.epochs, loss="mse")
    x, y = data["train"]
    # exact least squares: [X 1] W = onehot(y), in float64
    a = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1).double()
    t = torch.nn.functional.one_hot(y, 10).double()
    sol = torch.linalg.lstsq(a.cpu(), t.cpu()).solution.to(x.device)
    exact = LogisticRegression().to(x.device)
    with torch.no_grad():
        exact.fc.weight.copy_(sol[:-1].T.float())
        exact.fc.bias.copy_(sol[-1].float())
    closed = {"optimizer": "lstsq (closed form)", "loss": "mse",
              "objective": round(objective_value(exact, x, y, "mse"), 6), "train_accuracy": _accuracy(exact, x, y),
              "val_accuracy": _accuracy(exact, *data["val"]), "test_accuracy": _accuracy(exact, *data["test"])}
    # the logistic-regression run with the same SGD settings is the optimum study's weight_decay 0 row
    return {"linear_regression_sgd": mse, "linear_regression_exact": closed}


def study_optimum(params: Params, data: dict) -> dict:
    """Per weight decay: the L-BFGS optimum, and SGD/Adam (their default lr) measured against it."""
    p = params.studies.optimum
    rows = []
    chunk = 50
    for wd in p.weight_decays:
        _, opt = _run(params, data, "lbfgs", params.train.lr.lbfgs, epochs=max(1, p.lbfgs_iters // chunk),
                      lbfgs_iters=chunk, weight_decay=wd)
        entry = {"weight_decay": wd, "lbfgs": opt}
        for name in ("sgd", "adam"):
            _, r = _run(params, data, name, getattr(params.train.lr, name), epochs=p.epochs, weight_decay=wd)
            r["objective_gap"] = round(r["objective"] - opt["objective"], 6)
            r["val_accuracy_gap"] = round(r["val_accuracy"] - opt["val_accuracy"], 6)
            r["test_accuracy_gap"] = round(r["test_accuracy"] - opt["test_accuracy"], 6)
            entry[name] = r
        rows.append(entry)
    return {"rows": rows}


def study_l1l2(params: Params, data: dict, figure: str | Path | None = None) -> dict:
    """SGD with each strength as L1, then as L2; sparsity = share of |w| < evaluate.sparsity_threshold."""
    p = params.studies.l1l2
    thr = params.evaluate.sparsity_threshold
    rows, strongest = [], {}
    for kind in ("l1", "weight_decay"):
        for v in p.values:
            if v == 0 and kind == "weight_decay":
                continue  # the unregularized run is the l1 = 0 one
            model, r = _run(params, data, "sgd", p.lr, epochs=p.epochs, batch_size=p.batch_size, **{kind: v})
            w = model.fc.weight.detach().cpu()
            r.update(penalty=kind if v else "none", strength=v, sparsity=round(weight_sparsity(w, thr), 6),
                     exact_zeros=round(float((w == 0).float().mean()), 6), l1_norm=round(float(w.abs().sum()), 3),
                     l2_norm=round(float(w.norm()), 3))
            rows.append(r)
            if v == max(p.values):
                strongest[kind] = w
    if figure is not None and len(strongest) == 2:
        from mnistlr import figures, study_figures

        fig = study_figures.weight_rows_figure(
            {f"L1 = {max(p.values):g}": strongest["l1"].numpy(), f"L2 = {max(p.values):g}": strongest["weight_decay"].numpy()},
            title="Per-class weights: L1 (top) vs L2 (bottom) at the same strength; white = 0",
        )
        atomic.save_figure(fig, figure)
        figures.close(fig)
    return {"sparsity_threshold": thr, "rows": rows}


def study_sweep(params: Params, data: dict, optimum: dict) -> dict:
    """Every candidate (and the L-BFGS optima) scored on validation; the winner refitted and tested once."""
    p = params.studies.sweep
    rows = []
    for c in p.candidates:
        _, r = _run(params, data, c.optimizer, c.lr, splits=("val",), epochs=c.epochs, batch_size=c.batch_size,
                    weight_decay=c.weight_decay)
        rows.append(r)
    fitted = []  # already fitted by the optimum study (same seed and data): reused, their test numbers hidden
    for entry in optimum["rows"]:
        for name in ("lbfgs", "sgd", "adam"):
            r = {k: v for k, v in entry[name].items() if not k.endswith("_gap") and k != "test_accuracy"}
            r["from"] = "optimum study"
            rows.append(r)
            fitted.append(entry[name])
    best = max(range(len(rows)), key=lambda i: rows[i]["val_accuracy"])  # first of equals
    b = rows[best]
    point = SweepPoint(optimizer=b["optimizer"], lr=b["lr"], epochs=b["epochs"], batch_size=b["batch_size"],
                       weight_decay=b["weight_decay"])
    overrides = dict(epochs=point.epochs, batch_size=point.batch_size, weight_decay=point.weight_decay)
    if point.optimizer == "lbfgs":
        overrides["lbfgs_iters"] = 50  # the optimum study's chunk: `epochs` chunks of 50 iterations
    n_new = len(p.candidates)
    if best >= n_new:  # the optimum study already trained it on train and tested it once
        on_train = fitted[best - n_new]
    else:
        _, on_train = _run(params, data, point.optimizer, point.lr, **overrides)
    result = {"rows": rows, "best_index": best, "best": point.model_dump(), "trained_on_train": on_train}
    if p.refit:
        both = {"train": (torch.cat([data["train"][0], data["val"][0]]), torch.cat([data["train"][1], data["val"][1]])),
                "val": data["val"], "test": data["test"]}
        _, refit = _run(params, both, point.optimizer, point.lr, splits=("test",), **overrides)
        result["refit_on_train_val"] = refit
    return result


def run_study(name: str, params: Params, prepared: str | Path, out: str | Path,
              figure: str | Path | None = None, optimum: str | Path | None = None) -> dict:
    """Run one study and write its JSON."""
    if name not in STUDIES:
        raise MnistlrError(f"unknown study {name!r}; accepted: {', '.join(STUDIES)}")
    torch.manual_seed(params.seed)
    data = _data(prepared, resolve_device(params.train.device))
    if name == "mse":
        result = study_mse(params, data)
    elif name == "optimum":
        result = study_optimum(params, data)
    elif name == "l1l2":
        result = study_l1l2(params, data, figure)
    else:
        if optimum is None or not Path(optimum).is_file():
            raise MnistlrError(f"the sweep needs the optimum study's JSON; not found: {optimum}")
        result = study_sweep(params, data, json.loads(Path(optimum).read_text()))
    result = {"study": name, "params": params.studies.model_dump()[name], "device": str(data["train"][0].device), **result}
    atomic.write_json(out, result)
    return result
