"""Bad input gives one early, clear line naming the bad value and what is accepted.

Params are checked where they are parsed; data faults through `prepare`, which must then
leave no output folder behind. Decoder and mirror cases of their own are in tests/test_data.py.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mnistlr import data
from mnistlr.errors import MnistlrError
from mnistlr.params import parse_params
from mnistlr.prepare import prepare
from tests.conftest import SMALL_PARAMS, dvc, encode_idx, make_project, project_env, write_mirror


def _message(raw: dict) -> str:
    with pytest.raises(MnistlrError) as info:
        parse_params(raw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "raw,expected",
    [
        ({"optimizer": "rmsprop"}, "optimizer = 'rmsprop' is not accepted; accepted: 'sgd', 'adam' or 'lbfgs'"),
        ({"train": {"lr": {"sgd": 0}}}, "train.lr.sgd = 0: input should be greater than 0"),
        ({"train": {"lr": {"adam": -0.1}}}, "train.lr.adam = -0.1: input should be greater than 0"),
        ({"train": {"epochs": 0}}, "train.epochs = 0: input should be greater than 0"),
        ({"train": {"batch_size": -4}}, "train.batch_size = -4: input should be greater than 0"),
        ({"variants": {"a": {"fraction": 0}}}, "variants.a.fraction = 0: input should be greater than 0"),
        ({"variants": {"a": {"fraction": 1.5}}}, "variants.a.fraction = 1.5: input should be less than or equal to 1"),
        ({"variants": {"a": {"noise": 1.0}}}, "variants.a.noise = 1.0: input should be less than 1"),
        ({"variants": {"a": {"noise": -0.1}}}, "variants.a.noise = -0.1: input should be greater than or equal to 0"),
        ({"data": {"val_size": 70000}}, "data.val_size = 70000: input should be less than 60000"),
        ({"train": {"epochs": "10"}}, "train.epochs = '10': input should be a valid integer"),
        ({"train": {"lr": {"sgd": "fast"}}}, "train.lr.sgd = 'fast': input should be a valid number"),
        ({"train": {"lr": {"sgd": float("inf")}}}, "train.lr.sgd = inf: input should be a finite number"),
        ({"data": {"mean": float("nan")}}, "data.mean = nan: input should be a finite number"),
        ({"train": {"grad_clip": -1}}, "train.grad_clip = -1: input should be greater than or equal to 0"),
        ({"train": {"patience": 1.5}}, "train.patience = 1.5: input should be a valid integer"),
        ({"optimzer": "adam"}, "unknown key 'optimzer' (did you mean 'optimizer'?); accepted here: seed, optimizer,"),
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (did you mean 'train.epochs'?); accepted here: epochs,"),
        # a single value where a group of params is expected names the group's keys
        (
            {"train": {"lr": 0.01}},
            "train.lr = 0.01: a learning rate per optimizer is expected: "
            "set train.lr.sgd, train.lr.adam or train.lr.lbfgs",
        ),
        ({"variants": {"a": 0.5}}, "variants.a = 0.5: a mapping of params is expected: set variants.a.fraction or"),
        (
            {"variants": 3},
            "variants = 3: a mapping of names, each with fraction, noise, is expected: e.g. set variants.",
        ),
        ({"train": 5}, "train = 5: a mapping of params is expected: set train.epochs, train.batch_size,"),
        (
            {"studies": {"sweep": {"candidates": [0.1]}}},
            "studies.sweep.candidates.0 = 0.1: a mapping of params is expected: set studies.sweep.candidates.0.opt",
        ),
        ({"studies": {"sweep": {"candidates": 1}}}, "studies.sweep.candidates = 1: a list is expected, each entry"),
        ({"studies": {"optimum": {"weight_decays": 0.1}}}, "studies.optimum.weight_decays = 0.1: a list of numbers is"),
        ({"data": {"deskew": "maybe"}}, "data.deskew = 'maybe': a boolean is expected; accepted: true or false"),
    ],
)
def test_bad_param_is_one_line_naming_value_and_accepted(raw, expected):
    assert _message(raw).startswith("params.yaml: " + expected)


def test_grad_clip_and_patience_default_off():
    t = parse_params({}).train
    assert (t.grad_clip, t.patience) == (0.0, 0)


def test_val_size_is_checked_against_the_real_training_count(use_synthetic_mirror, tmp_path):
    # 5000 passes the schema (< 60000) but the synthetic mirror holds only 1200 training images.
    params = parse_params({"data": {"val_size": 5000}})
    with pytest.raises(MnistlrError, match=r"^data\.val_size = 5000 leaves no training images; accepted: 1\.\.1199$"):
        prepare(params, tmp_path / "prepared", tmp_path / "raw")
    assert not (tmp_path / "prepared").exists()


# --- data faults ------------------------------------------------------------------------


def _tampered_mirror(tmp_path, monkeypatch, name: str, change) -> None:
    """A small mirror where `name`'s bytes are replaced by change(bytes), with md5 sums to match.

    The sums are regenerated so that the fault reaches the decoder rather than the md5 check.
    """
    mirror = write_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    path = mirror / name
    path.write_bytes(change(path.read_bytes()))
    (mirror / "MD5SUMS").write_text("".join(f"{data.file_md5(mirror / n)}  {n}\n" for n in data.CANONICAL_MD5))
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))


def _regzip(edit):
    return lambda blob: gzip.compress(edit(gzip.decompress(blob)), mtime=0)


@pytest.mark.parametrize(
    "name,change,expected",
    [
        (
            "train-images-idx3-ubyte.gz",
            lambda b: b[: len(b) // 2],
            r"train-images-idx3-ubyte\.gz: not a readable gzip file \(.*\); delete it and fetch it again",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            lambda b: b"\x00garbage" * 10,
            r"t10k-images-idx3-ubyte\.gz: not a readable gzip file",
        ),
        (
            "train-images-idx3-ubyte.gz",
            _regzip(lambda d: encode_idx(np.zeros(40, dtype=np.uint8))),
            r"train-images-idx3-ubyte\.gz: magic number 0x00000801, expected 0x00000803",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            _regzip(lambda d: encode_idx(np.zeros(39, dtype=np.uint8))),
            r"^train: 40 images but 39 labels; the files do not belong together$",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            _regzip(lambda d: d[:-1] + b"\x0b"),
            r"t10k-labels-idx1-ubyte\.gz: label 11 at index 19 is outside 0-9",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            _regzip(lambda d: d[:-100]),
            r"t10k-images-idx3-ubyte\.gz: header declares shape \(20, 28, 28\) = 15680 bytes of data, file holds 15580",
        ),
    ],
    ids=["truncated-gz", "not-gzip", "wrong-magic", "count-mismatch", "label-out-of-range", "short-payload"],
)
def test_broken_mirror_file_fails_prepare_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, name, change, expected
):
    _tampered_mirror(tmp_path, monkeypatch, name, change)
    with pytest.raises(MnistlrError, match=expected) as info:
        prepare(parse_params({"data": {"val_size": 10}}), tmp_path / "prepared", tmp_path / "raw")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "prepared").exists()


def test_md5_mismatch_fails_prepare_naming_file_and_both_sums(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    expected = data.file_md5(mirror / "train-labels-idx1-ubyte.gz")
    path = mirror / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(
        MnistlrError, match=rf"train-labels-idx1-ubyte\.gz: md5 [0-9a-f]{{32}} does not match the expected {expected}"
    ):
        prepare(parse_params({"data": {"val_size": 10}}), tmp_path / "prepared", tmp_path / "raw")
    assert not (tmp_path / "prepared").exists()


def test_failed_download_without_mirror_says_to_set_the_mirror(tmp_path, monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    for var in (data.MIRROR_ENV, data.MD5SUMS_ENV, data.URLS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MnistlrError) as info:
        data.locate(tmp_path / "raw")
    msg = str(info.value)
    assert tried == [base + "train-images-idx3-ubyte.gz" for base in data.DOWNLOAD_URLS]
    assert msg.startswith("could not download train-images-idx3-ubyte.gz (")
    for base in data.DOWNLOAD_URLS:
        assert f"{base}: <urlopen error [Errno -3] Temporary failure in name resolution>" in msg
    assert "\n" not in msg
    assert msg.endswith("without internet, set MNISTLR_MNIST_DIR to a folder holding the four MNIST .gz files")


# --- a misspelt key through DVC ---------------------------------------------------------


@pytest.fixture(scope="module")
def one_variant_project(tmp_path_factory, synthetic_mirror):
    project = make_project(tmp_path_factory.mktemp("proj"), {"variants": {"full": {"fraction": 1.0, "noise": 0.0}}})
    return project, project_env(synthetic_mirror, synthetic=True)


def test_dvc_exp_run_with_misspelt_key_fails(one_variant_project):
    # DVC 3 (hydra) refuses to override a key that params.yaml lacks ("Could not override
    # 'optimzer'"), before any stage runs.
    project, env = one_variant_project
    proc = dvc("exp", "run", "-S", "optimzer=adam", cwd=project, env=env, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "optimzer" in proc.stderr


def test_dvc_exp_run_appending_a_misspelt_key_is_refused_with_a_suggestion(one_variant_project):
    # `-S +key=value` is how DVC adds a key that is not there: then loading params must refuse it.
    project, env = one_variant_project
    proc = dvc("exp", "run", "-S", "+optimzer=adam", cwd=project, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "error: params.yaml: unknown key 'optimzer' (did you mean 'optimizer'?)" in out, out
    assert "Traceback" not in out


def test_dvc_exp_run_takes_a_small_weight_decay(tmp_path, synthetic_mirror):
    """`-S train.weight_decay=1e-5` is written by DVC as 1e-05, a number to DVC and so to the stages.
    Only the prepare stage runs: it loads and checks every param."""
    project = make_project(tmp_path / "proj", SMALL_PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    proc = dvc("exp", "run", "-S", "train.weight_decay=1e-5", "prepare", cwd=project, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weight_decay: 1e-05" in (project / "params.yaml").read_text()


# --- how entry points report a user's mistake ----------------------------------------------


def test_user_errors_prints_one_line_and_exits_1_unless_debugging(monkeypatch, capsys):
    from mnistlr.errors import DEBUG_ENV, user_errors

    @user_errors
    def stage(fail: bool) -> str:
        if fail:
            raise MnistlrError("train.lr.sgd = 0 is not accepted")
        return "done"

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert stage(False) == "done"
    with pytest.raises(SystemExit) as info:
        stage(True)
    assert info.value.code == 1 and info.value.__cause__ is None and info.value.__suppress_context__
    assert capsys.readouterr().err == "error: train.lr.sgd = 0 is not accepted\n"
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(MnistlrError, match="train.lr.sgd = 0"):
        stage(True)
