"""The studies pipeline (studies/dvc.yaml): baselines and limits of the linear model, and their report.

mse      - linear regression (least squares on one-hot targets) beside logistic regression
optimum  - full-batch L-BFGS minimum of the regularized objective vs SGD/Adam after N epochs
l1l2     - test accuracy and weight sparsity, L1 against L2 over the same strengths
sweep    - the best linear model, chosen on validation accuracy only, refitted on train + val

Each study is one process looping over its grid (one `import torch` instead of one per run) and
writes a small JSON; `write_studies_report` turns them into reports/studies.md.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from mnistlr import atomic, metrics
from mnistlr.data import NUM_CLASSES, load_split
from mnistlr.errors import MnistlrError
from mnistlr.params import Params, SweepPoint, TrainParams
from mnistlr.train import LogisticRegression, fit, objective_value, predict_logits, resolve_device, to_device

STUDIES = ("mse", "optimum", "l1l2", "sweep")
COMMAND = "dvc repro studies/dvc.yaml"
LBFGS_CHUNK = 50  # L-BFGS iterations per logged "epoch" in the studies


def _data(prepared: str | Path, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {s: tuple(to_device(device, *load_split(prepared, s))) for s in ("train", "val", "test")}


def _accuracy(model: LogisticRegression, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(metrics.accuracy(predict_logits(model, x).cpu().numpy(), y.cpu().numpy()), 6)


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
    t = torch.nn.functional.one_hot(y, NUM_CLASSES).double()
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
    for wd in p.weight_decays:
        _, opt = _run(params, data, "lbfgs", params.train.lr.lbfgs, epochs=max(1, p.lbfgs_iters // LBFGS_CHUNK),
                      lbfgs_iters=LBFGS_CHUNK, weight_decay=wd)
        entry = {"weight_decay": wd, "lbfgs": opt}
        for name in ("sgd", "adam"):
            _, r = _run(params, data, name, getattr(params.train.lr, name), epochs=p.epochs, weight_decay=wd)
            r["objective_gap"] = round(r["objective"] - opt["objective"], 6)
            r["val_accuracy_gap"] = round(r["val_accuracy"] - opt["val_accuracy"], 6)
            r["test_accuracy_gap"] = round(r["test_accuracy"] - opt["test_accuracy"], 6)
            entry[name] = r
        rows.append(entry)
    return {"rows": rows, "n_train": int(data["train"][1].shape[0])}


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
            r.update(penalty=kind if v else "none", strength=v, sparsity=round(metrics.weight_sparsity(w.numpy(), thr), 6),
                     exact_zeros=round(float((w == 0).float().mean()), 6), l1_norm=round(float(w.abs().sum()), 3),
                     l2_norm=round(float(w.norm()), 3))
            rows.append(r)
            if v == max(p.values):
                strongest[kind] = w
    if figure is not None and len(strongest) == 2:
        from mnistlr import figures

        fig = figures.weight_rows_figure(
            {f"L1 = {max(p.values):g}": strongest["l1"].numpy(), f"L2 = {max(p.values):g}": strongest["weight_decay"].numpy()},
            title="Per-class weights: L1 (top) vs L2 (bottom) at the same strength; white = 0",
        )
        figures.save(fig, figure)
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
        overrides["lbfgs_iters"] = LBFGS_CHUNK  # as in the optimum study: `epochs` chunks of LBFGS_CHUNK iterations
    n_new = len(p.candidates)
    if best >= n_new:  # the optimum study already trained it on train and tested it once
        on_train = fitted[best - n_new]
    else:
        _, on_train = _run(params, data, point.optimizer, point.lr, **overrides)
    result = {"rows": rows, "best_index": best, "best": point.model_dump(), "trained_on_train": on_train,
              "n_train": int(data["train"][1].shape[0]), "n_val": int(data["val"][1].shape[0])}
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
    # The studies' small matrix products: on a shared 2-core machine one thread ran SGD 2.4x faster than two.
    torch.set_num_threads(1)
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


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _config(r: dict) -> str:
    if r["optimizer"] == "lbfgs":
        return f"lbfgs, {r['epochs'] * LBFGS_CHUNK} iterations, wd {r['weight_decay']:g}"
    return f"{r['optimizer']} lr {r['lr']:g}, bs {r['batch_size']}, {r['epochs']} ep, wd {r['weight_decay']:g}"


def mse_section(m: dict, logistic: dict) -> list[str]:
    rows = [
        [f"logistic regression (cross-entropy), SGD lr {logistic['lr']:g} (optimum study, weight decay 0)",
         _pct(logistic["val_accuracy"]), _pct(logistic["test_accuracy"])],
        [f"linear regression (least squares on one-hot), SGD lr {m['linear_regression_sgd']['lr']:g}",
         _pct(m["linear_regression_sgd"]["val_accuracy"]), _pct(m["linear_regression_sgd"]["test_accuracy"])],
        ["linear regression, exact least-squares solution (lstsq)",
         _pct(m["linear_regression_exact"]["val_accuracy"]), _pct(m["linear_regression_exact"]["test_accuracy"])],
    ]
    return ["## 1. Linear regression baseline (`train.loss: mse`)", "",
            f"Same linear layer, same data; SGD {logistic['epochs']} epochs, batch {logistic['batch_size']}, cosine schedule. "
            f"SGD on least squares needs a smaller learning rate than on cross-entropy (`studies.mse.lr`, here {m['linear_regression_sgd']['lr']:g}).", "",
            *_table(["model", "val acc %", "test acc %"], rows)]


def optimum_section(o: dict) -> list[str]:
    rows = []
    for e in o["rows"]:
        lb = e["lbfgs"]
        rows.append([f"{e['weight_decay']:g}", "L-BFGS", f"{lb['objective']:.5f}", "0", _pct(lb["val_accuracy"]), _pct(lb["test_accuracy"]), "-"])
        for name in ("sgd", "adam"):
            r = e[name]
            rows.append([f"{e['weight_decay']:g}", f"{name} lr {r['lr']:g}, {r['epochs']} ep", f"{r['objective']:.5f}",
                         f"{r['objective_gap']:+.5f}", _pct(r["val_accuracy"]), _pct(r["test_accuracy"]),
                         f"{100 * r['test_accuracy_gap']:+.2f}"])
    return ["## 2. The convex optimum (`optimizer: lbfgs`)", "",
            f"Training objective = mean cross-entropy on the {o['n_train']} training images + weight_decay/2 * ||W||^2 "
            "(the function SGD and Adam with the same `weight_decay` minimize). L-BFGS: full batch, "
            f"{o['params']['lbfgs_iters']} iterations, strong-Wolfe line search. Gap = run - L-BFGS.", "",
            *_table(["weight decay", "optimizer", "train objective", "objective gap", "val acc %", "test acc %", "test acc gap (pts)"], rows),
             "At weight decay 0 (and nearly so at 1e-5) the objective is not strongly convex, so L-BFGS may still be "
            "descending when it stops: those rows are upper bounds on the minimum. Runs that stop short of the "
            "minimum can score as well or better on held-out images: stopping early regularizes much as weight "
            "decay does.", "",
            f"Best test accuracy of an exact optimum over this weight-decay grid: **{_pct(max(e['lbfgs']['test_accuracy'] for e in o['rows']))} %**.", ""]


def l1l2_section(d: dict) -> list[str]:
    rows = [[r["penalty"], f"{r['strength']:g}", _pct(r["test_accuracy"]), _pct(r["sparsity"]), _pct(r["exact_zeros"]),
             f"{r['l1_norm']:.1f}", f"{r['l2_norm']:.2f}"] for r in d["rows"]]
    return ["## 5. L1 and L2 seen", "",
            f"SGD lr {d['params']['lr']:g}, batch {d['params']['batch_size']}, {d['params']['epochs']} epochs, cosine; sparsity = share of |w| < {d['sparsity_threshold']:g}.", "",
            *_table(["penalty", "strength", "test acc %", "sparsity %", "exact zeros %", "sum abs w", "norm w"], rows),
            "L1 drives many weights (mostly the always-blank border pixels) towards zero while L2 at the same "
            "strength only shrinks them all a little; plain (sub)gradient steps make weights small, not exactly 0.", "",
            "![L1 vs L2 weights](studies/l1l2_weights.png)", ""]


def sweep_section(s: dict) -> list[str]:
    rows = []
    for i, r in enumerate(s["rows"]):
        mark = " **(selected)**" if i == s["best_index"] else ""
        rows.append([_config(r) + mark, f"{r['objective']:.4f}", _pct(r["train_accuracy"]), _pct(r["val_accuracy"])])
    b, t = s["best"], s["trained_on_train"]
    best_val, n_train, n_val = s["rows"][s["best_index"]]["val_accuracy"], s["n_train"], s["n_val"]
    out = ["## 4. The best linear model", "",
           f"Every candidate is trained on the {n_train} training images and scored on the {n_val} validation images; "
           "the one with the highest validation accuracy is selected, and only it touches the test set.", "",
           *_table(["config", "train objective", "train acc %", "val acc %"], rows),
           f"One standard error of an accuracy near {100 * best_val:.1f} % on {n_val} validation images is "
           f"{100 * math.sqrt(best_val * (1 - best_val) / n_val):.2f} points: differences smaller than that "
           "do not separate the candidates.", "",
           f"Selected: `{json.dumps(b)}`", "",
           f"- trained on train ({n_train}): val {_pct(t['val_accuracy'])} %, **test {_pct(t['test_accuracy'])} %**"]
    if "refit_on_train_val" in s:
        out.append(f"- refitted on train + val ({n_train + n_val}): **test {_pct(s['refit_on_train_val']['test_accuracy'])} %**")
    return out + [""]


def write_studies_report(results: str | Path, out: str | Path) -> str:
    results = Path(results)
    load = lambda n: json.loads((results / f"{n}.json").read_text())  # noqa: E731
    lines = ["# Studies: beyond the tutorial", "",
             f"Generated by `{COMMAND}` (studies/dvc.yaml; params: `studies:` in params.yaml). "
             "Multinomial logistic regression on raw normalized pixels; no augmentation, deskewing or features.", ""]
    opt = load("optimum")
    logistic = next(e["sgd"] for e in opt["rows"] if e["weight_decay"] == 0) if any(e["weight_decay"] == 0 for e in opt["rows"]) else opt["rows"][0]["sgd"]
    lines += mse_section(load("mse"), logistic) + optimum_section(load("optimum")) + sweep_section(load("sweep")) + l1l2_section(load("l1l2"))
    text = "\n".join(lines)
    atomic.write_text(out, text)
    return text
