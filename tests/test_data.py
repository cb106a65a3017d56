"""mnistlr.data: the four MNIST files (mirror or download, md5-verified), IDX decoding, split, variants."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnistlr import data
from mnistlr.errors import MnistlrError
from tests.conftest import encode_idx, synthetic_digits, write_mirror

# --- IDX decoding --------------------------------------------------------------------------------


def test_roundtrip_images_and_labels(tmp_path):
    images, labels = synthetic_digits(50, seed=3)
    (tmp_path / "i.gz").write_bytes(gzip.compress(encode_idx(images)))
    (tmp_path / "l").write_bytes(encode_idx(labels))  # raw (not gzipped) IDX works too
    got_images = data.read_images(tmp_path / "i.gz")
    got_labels = data.read_labels(tmp_path / "l")
    assert got_images.shape == (50, 28, 28) and got_images.dtype == np.uint8
    assert got_labels.shape == (50,) and got_labels.dtype == np.int64
    assert np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels.astype(np.int64))


def test_header_is_big_endian():
    # magic 0x00000803 then the three dimensions, each a big-endian uint32, then row-major bytes
    raw = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04" + bytes(range(24))
    assert np.array_equal(data.decode_images(raw), np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)) == raw  # the fixtures write the same format


def test_wrong_magic_is_named():
    labels = encode_idx(np.zeros(5, dtype=np.uint8))
    with pytest.raises(MnistlrError, match="magic number 0x00000801, expected 0x00000803"):
        data.decode_images(labels)


@pytest.mark.parametrize(
    "cut,expected",
    [(3, "3 bytes is too short for an IDX header"), (10, "header needs 16 bytes, file has 10")],
)
def test_truncated_header_is_named(cut, expected):
    with pytest.raises(MnistlrError, match=expected):
        data.decode_images(encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))[:cut])


def test_short_payload_is_named():
    raw = encode_idx(np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(MnistlrError, match=r"declares shape \(4, 28, 28\) = 3136 bytes of data, file holds 3000"):
        data.decode_images(raw[: 16 + 3000])


def test_label_outside_range_is_named():
    with pytest.raises(MnistlrError, match="label 12 at index 2 is outside 0-9"):
        data.decode_labels(encode_idx(np.array([1, 2, 12], dtype=np.uint8)))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    blob = gzip.compress(encode_idx(np.zeros((10, 28, 28), dtype=np.uint8)))
    (tmp_path / "bad.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MnistlrError, match="not a readable gzip file"):
        data.read_images(tmp_path / "bad.gz")


# --- the mirror ----------------------------------------------------------------------------------


def test_real_mirror_verifies_and_decodes(real_mirror, monkeypatch):
    monkeypatch.delenv(data.MD5SUMS_ENV, raising=False)
    raw = data.load_mnist(data.from_mirror(real_mirror))
    assert raw["train_images"].shape == (60000, 28, 28) and raw["train_images"].dtype == np.uint8
    assert raw["test_images"].shape == (10000, 28, 28)
    assert np.bincount(raw["train_labels"]).tolist()[:2] == [5923, 6742]


def test_canonical_md5_rejects_other_files(tmp_path, monkeypatch):
    monkeypatch.delenv(data.MD5SUMS_ENV, raising=False)
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    with pytest.raises(MnistlrError, match=r"md5 [0-9a-f]{32} does not match the expected f68b3c2d"):
        data.from_mirror(mirror)


def test_md5sums_override_accepts_synthetic_mirror(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    raw = data.load_mnist(data.from_mirror(mirror))
    assert raw["train_images"].shape == (20, 28, 28)


def test_md5sums_file_lacking_a_file_is_named(tmp_path):
    sums = tmp_path / "MD5SUMS"
    sums.write_text(f"{'0' * 32}  train-images-idx3-ubyte.gz\n{'1' * 32}  *train-labels-idx1-ubyte.gz\n")
    with pytest.raises(
        MnistlrError, match=r"MD5SUMS: no md5 for t10k-images-idx3-ubyte\.gz, t10k-labels-idx1-ubyte\.gz$"
    ):
        data.read_md5sums(sums)


def test_corrupted_file_fails_md5(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    path = mirror / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(MnistlrError, match="t10k-labels-idx1-ubyte.gz: md5 .* does not match"):
        data.from_mirror(mirror)


def test_missing_file_names_file_and_env(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    (mirror / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistlrError, match="train-labels-idx1-ubyte.gz is missing from the mirror MNISTLR_MNIST_DIR="):
        data.from_mirror(mirror)


def test_mirror_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(
        MnistlrError, match=r"^MNISTLR_MNIST_DIR=.*nowhere is not a folder holding the four MNIST \.gz files$"
    ):
        data.from_mirror(tmp_path / "nowhere")


def test_locate_prefers_the_mirror_and_never_downloads(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    monkeypatch.setattr(data, "download", lambda root: pytest.fail("must not download when a mirror is set"))
    before = sorted(p.name for p in mirror.iterdir())
    assert data.locate(tmp_path / "raw") == {n: mirror / n for n in data.CANONICAL_MD5}
    assert sorted(p.name for p in mirror.iterdir()) == before  # nothing written into the mirror
    assert not (tmp_path / "raw").exists()


# --- download ------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


@pytest.fixture
def served_mirror(tmp_path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """A synthetic mirror served over HTTP on 127.0.0.1 (a free port); yields (root URL, folder)."""
    mirror = write_mirror(tmp_path / "served" / "mnist", n_train=30, n_test=10)
    handler = functools.partial(_Quiet, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(data.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    for var in ("no_proxy", "NO_PROXY"):  # a proxy from the environment must not see the local server
        monkeypatch.setenv(var, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_download_fetches_and_verifies_all_four_files(served_mirror, tmp_path, monkeypatch):
    root_url, mirror = served_mirror
    monkeypatch.setenv(data.URLS_ENV, root_url + "mnist/")
    paths = data.download(tmp_path / "raw")
    assert paths == {n: tmp_path / "raw" / n for n in data.CANONICAL_MD5}
    for name, path in paths.items():
        assert path.read_bytes() == (mirror / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(data.CANONICAL_MD5)  # no temp files left
    assert data.load_mnist(paths)["train_images"].shape == (30, 28, 28)


def test_download_reuses_verified_files_and_refetches_a_corrupt_one(served_mirror, tmp_path, monkeypatch):
    root_url, mirror = served_mirror
    monkeypatch.setenv(data.URLS_ENV, root_url + "mnist/")
    raw = tmp_path / "raw"
    data.download(raw)
    broken = raw / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(b"not the file")
    (mirror / "train-images-idx3-ubyte.gz").unlink()  # the server no longer has it: it must not be fetched again
    data.download(raw)
    assert broken.read_bytes() == (mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_download_falls_back_to_the_next_base_url(served_mirror, tmp_path, monkeypatch):
    root_url, mirror = served_mirror
    wrong = tmp_path / "served" / "wrong"  # serves files with the right names and the wrong bytes
    wrong.mkdir()
    for name in data.CANONICAL_MD5:
        (wrong / name).write_bytes(b"not mnist")
    monkeypatch.setenv(data.URLS_ENV, f"{root_url}missing/ {root_url}wrong/ {root_url}mnist/")
    paths = data.download(tmp_path / "raw")
    for name, path in paths.items():
        assert data.file_md5(path) == data.file_md5(mirror / name)


def test_download_with_every_base_url_failing_names_each_one(served_mirror, tmp_path, monkeypatch):
    root_url, _ = served_mirror
    bases = [f"{root_url}missing/", f"{root_url}gone/"]
    monkeypatch.setenv(data.URLS_ENV, " ".join(bases))
    with pytest.raises(MnistlrError) as info:
        data.download(tmp_path / "raw")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("could not download train-images-idx3-ubyte.gz (")
    for base in bases:
        assert f"{base}: HTTP Error 404" in msg
    assert msg.endswith("without internet, set MNISTLR_MNIST_DIR to a folder holding the four MNIST .gz files")
    assert not any((tmp_path / "raw").iterdir())  # no partial or temp file left behind


# --- normalize, split, subsets, label noise ------------------------------------------------------


def test_normalize_scales_then_standardizes_and_flattens():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = data.normalize(images, mean=0.1307, std=0.3081)
    assert x.shape == (1, 4) and x.dtype == np.float32
    expected = (np.array([0.0, 1.0, 0.2, 0.4]) - 0.1307) / 0.3081
    np.testing.assert_allclose(x[0], expected, atol=1e-6)


@pytest.mark.parametrize("deskew", [False, True])
def test_preprocessing_holds_one_copy_of_the_floats(deskew):
    """prepare's peak memory is one split's floats: applying the preprocessing allocates its output
    once, plus (deskewing) a scratch bounded by the chunk. Measured as the peak's growth per image
    between two sizes, in units of one image's output (784 float32); the sizes are large enough that
    a second copy of the output would outgrow the deskew's scratch."""
    import tracemalloc

    pre = data.Preprocessing(deskew, 0.1307, 0.3081)
    small, large = 16 * data.DESKEW_CHUNK, 32 * data.DESKEW_CHUNK
    images = np.random.default_rng(0).integers(0, 256, (large, 28, 28), dtype=np.uint8)
    peaks = {}
    for n in (small, large):
        tracemalloc.start()
        try:
            x = pre.apply(images[:n])
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert x.shape == (n, 784) and x.dtype == np.float32
        del x
    per_image = (peaks[large] - peaks[small]) / (large - small)
    assert per_image < 1.25 * 784 * 4, f"{per_image / (784 * 4):.2f} output copies per image"


def test_standardize_copies_unless_handed_over():
    pixels = np.full((2, 4), 0.5, dtype=np.float32)
    x = data.standardize(pixels, 0.5, 2.0)
    assert np.all(pixels == 0.5) and np.all(x == 0.0)  # the caller's array untouched
    y = data.standardize(pixels, 0.5, 2.0, in_place=True)
    assert np.shares_memory(y, pixels) and np.all(pixels == 0.0)


def test_normalized_real_training_images_have_mnist_statistics(real_mirror):
    x = data.normalize(data.read_images(real_mirror / "train-images-idx3-ubyte.gz"), 0.1307, 0.3081)
    assert abs(float(x.mean(dtype=np.float64))) < 1e-3 and abs(float(x.std(dtype=np.float64)) - 1) < 1e-3


# --- deskewing -------------------------------------------------------------------------------------


def _sheared_bar(slant: float, shift: tuple[int, int] = (0, 0), value: float = 200.0) -> np.ndarray:
    """A 2-pixel-wide bar of 16 rows whose column moves `slant` per row down, off-centre by `shift`."""
    img = np.zeros((28, 28), np.float32)
    for r in range(6, 22):
        c = 13.5 + slant * (r - 13.5) + shift[1]
        for dc in (-0.5, 0.5):
            img[r + shift[0], round(c + dc)] = value
    return img


@pytest.mark.parametrize("slant", [-0.5, -0.25, 0.3, 0.45])
def test_deskew_sets_a_sheared_bar_upright_and_centred(slant):
    bar = _sheared_bar(slant, shift=(2, -3))
    _, _, before = data.moments(bar[None])
    assert abs(before[0] - slant) < 0.08  # the moments see the shear that was built in
    out = data.deskew(bar[None])
    mr, mc, after = data.moments(out)
    assert abs(after[0]) < 0.02, after  # upright
    assert abs(mr[0] - 13.5) < 0.05 and abs(mc[0] - 13.5) < 0.05  # mass in the middle of the field
    ink_columns = np.flatnonzero(out[0].sum(axis=0) > 0.05 * out[0].sum())
    assert ink_columns.min() >= 12 and ink_columns.max() <= 15, ink_columns  # one vertical stroke
    assert abs(out.sum() - bar.sum()) < 0.01 * bar.sum()  # ink moved, not lost
    assert out.dtype == np.float32 and out.shape == (1, 28, 28)


def test_deskew_leaves_upright_centred_digits_and_blanks_alone():
    upright = _sheared_bar(0.0)
    np.testing.assert_allclose(data.deskew(upright[None])[0], upright, atol=1e-3)
    assert not data.deskew(np.zeros((2, 28, 28), np.uint8)).any()


def test_deskew_is_per_image_deterministic_and_chunk_independent(monkeypatch):
    images, _ = synthetic_digits(40, seed=3)
    whole = data.deskew(images)
    assert np.array_equal(whole, data.deskew(images))
    monkeypatch.setattr(data, "DESKEW_CHUNK", 7)  # chunks of 7 give the same images
    assert np.array_equal(whole, data.deskew(images))
    assert np.array_equal(whole[5], data.deskew(images[5:6])[0])
    # linear in intensity: uint8 pixels and pixels / 255 deskew alike (predict's path vs prepare's)
    np.testing.assert_allclose(data.deskew(images / np.float32(255)) * 255, whole, atol=1e-3)


def test_deskewed_real_training_set_has_no_slant(real_mirror):
    images = data.read_images(real_mirror / "train-images-idx3-ubyte.gz")
    _, _, before = data.moments(images)
    mr, mc, after = data.moments(data.deskew(images))
    print(
        f"mean |slant| of the 60k training digits: {np.abs(before).mean():.4f} plain, "
        f"{np.abs(after).mean():.4f} deskewed"
    )
    assert np.abs(before).mean() > 0.15  # MNIST digits do lean
    assert np.abs(after).mean() < 0.01 and abs(after.mean()) < 0.005
    assert abs(mr.mean() - 13.5) < 0.01 and abs(mc.mean() - 13.5) < 0.01


def test_derived_seeds_depend_on_seed_and_every_salt():
    assert data.derive_seed(42, "split") == data.derive_seed(42, "split")
    seeds = {
        data.derive_seed(42, "split"),
        data.derive_seed(43, "split"),
        data.derive_seed(42, "subset"),
        data.derive_seed(42, "noise", "a"),
        data.derive_seed(42, "noise", "b"),
        data.derive_seed(42),
    }
    assert len(seeds) == 6
    assert all(0 <= s < 2**63 for s in seeds)
    a, b = data.rng(42, "noise", "a").integers(0, 2**32, 8), data.rng(42, "noise", "b").integers(0, 2**32, 8)
    assert np.array_equal(a, data.rng(42, "noise", "a").integers(0, 2**32, 8)) and not np.array_equal(a, b)


def test_split_is_disjoint_complete_and_seeded():
    train, val = data.split_indices(60000, 10000, seed=7)
    assert len(train) == 50000 and len(val) == 10000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    assert not set(train.tolist()) & set(val.tolist())
    again = data.split_indices(60000, 10000, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    other = data.split_indices(60000, 10000, seed=8)
    assert not np.array_equal(val, other[1])


@pytest.mark.parametrize("fraction,size", [(0.1, 5000), (0.25, 12500), (0.5, 25000), (1.0, 50000), (1e-9, 1)])
def test_subset_sizes(fraction, size):
    idx = data.subset_indices(50000, fraction, seed=0)
    assert data.subset_size(50000, fraction) == size == len(idx) == len(set(idx.tolist()))


def test_smaller_subsets_nest_in_larger_ones():
    small, large = data.subset_indices(1000, 0.1, 3), data.subset_indices(1000, 0.5, 3)
    assert set(small.tolist()) <= set(large.tolist())


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.9])
def test_noise_changes_exactly_round_rate_n_labels_each_to_a_different_class(rate):
    labels = np.random.default_rng(1).integers(0, 10, 5003)
    noisy, changed = data.corrupt_labels(labels, rate, data.rng(0, "t"))
    assert int(changed.sum()) == round(rate * 5003)
    assert bool((noisy[changed] != labels[changed]).all())  # every corrupted label is wrong
    assert np.array_equal(noisy[~changed], labels[~changed])  # the rest are intact
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    assert not np.shares_memory(noisy, labels)  # the input is not modified in place


def test_noise_reaches_every_other_class():
    labels = np.zeros(20000, dtype=np.int64)
    noisy, changed = data.corrupt_labels(labels, 0.5, data.rng(0, "t"))
    counts = np.bincount(noisy[changed], minlength=10)
    assert counts[0] == 0 and bool((counts[1:] > 900).all())


def test_variant_summary_counts_and_seeding():
    labels = np.arange(1000, dtype=np.int64) % 10
    v = data.build_variant(labels, "noisy", 0.5, 0.1, seed=1)
    s = v.summary("noisy", 0.5, 0.1)
    assert s["size"] == 500 and s["labels_changed"] == 50 and sum(s["class_histogram"]) == 500
    assert s["class_histogram"] == np.bincount(v.labels, minlength=10).tolist()
    assert np.array_equal(v.labels[~v.changed], labels[v.index][~v.changed])
    w = data.build_variant(labels, "noisy", 0.5, 0.1, seed=1)
    assert np.array_equal(v.labels, w.labels) and np.array_equal(v.index, w.index)
    other = data.build_variant(labels, "other", 0.5, 0.1, seed=1)  # same subset, its own noise draw
    assert np.array_equal(v.index, other.index) and not np.array_equal(v.changed, other.changed)


# --- the prepared folder -------------------------------------------------------------------------


def test_prepared_splits_and_variants_load_as_written(tmp_path, use_synthetic_mirror):
    from mnistlr.params import parse_params
    from mnistlr.prepare import prepare

    params = parse_params(
        {"data": {"val_size": 200}, "variants": {"full": {}, "half": {"fraction": 0.5, "noise": 0.2}}}
    )
    summaries = prepare(params, tmp_path / "prepared", tmp_path / "raw")
    assert summaries["half"]["size"] == 500 and summaries["half"]["labels_changed"] == 100
    x, y = data.load_split(tmp_path / "prepared", "train")
    assert x.shape == (1000, 784) and x.dtype == np.float32 and y.dtype == np.int64
    assert [data.load_split(tmp_path / "prepared", s)[0].shape[0] for s in ("val", "test")] == [200, 300]
    hx, hy = data.load_variant(tmp_path / "prepared", "half")
    with np.load(tmp_path / "prepared" / "variants" / "half.npz") as v:
        assert np.array_equal(hx, x[v["index"]]) and np.array_equal(hy, v["y"])
        assert int(v["changed"].sum()) == 100 and np.array_equal(hy[~v["changed"]], y[v["index"]][~v["changed"]])


@pytest.mark.parametrize(
    "deskew,mean,std,expected_from",
    [
        (False, "auto", "auto", "MNIST's published training-set statistics"),
        (True, "auto", "auto", "measured on the 1000 deskewed training images"),
        (True, 0.2, 0.5, "params.yaml"),
    ],
)
def test_prepare_records_the_preprocessing_of_its_arrays(
    tmp_path, use_synthetic_mirror, deskew, mean, std, expected_from
):
    import json

    from mnistlr.params import parse_params
    from mnistlr.prepare import prepare

    params = parse_params({"data": {"val_size": 200, "deskew": deskew, "mean": mean, "std": std}})
    prepare(params, tmp_path / "prepared", tmp_path / "raw")
    record = json.loads((tmp_path / "prepared" / "preprocessing.json").read_text())
    pre = data.load_preprocessing(tmp_path / "prepared")
    assert record["mean_std_from"] == expected_from and pre.deskew is deskew
    if mean == "auto" and not deskew:
        assert (pre.mean, pre.std) == (0.1307, 0.3081)
    elif mean == "auto":  # the deskewed training split's own: its arrays come out standardized
        x, _ = data.load_split(tmp_path / "prepared", "train")
        assert abs(float(x.mean(dtype=np.float64))) < 1e-3 and abs(float(x.std(dtype=np.float64)) - 1) < 2e-3
    else:
        assert (pre.mean, pre.std) == (mean, std)
    raw = data.read_images(use_synthetic_mirror / "t10k-images-idx3-ubyte.gz")
    x_test, _ = data.load_split(tmp_path / "prepared", "test")
    np.testing.assert_array_equal(x_test, pre.apply(raw))  # what the record says is what the arrays went through
    with np.load(tmp_path / "prepared" / "samples.npz") as samples:
        assert np.array_equal(samples["plain"], raw[:12])
        np.testing.assert_allclose(samples["deskewed"], data.deskew(raw[:12]))


def test_missing_prepared_split_or_variant_says_to_run_prepare(tmp_path):
    with pytest.raises(MnistlrError, match=r"^no prepared split 'val' at .*val; run the prepare stage first$"):
        data.load_split(tmp_path, "val")
    with pytest.raises(MnistlrError, match=r"^no prepared variant 'half' at .*half\.npz; run the prepare stage first$"):
        data.load_variant(tmp_path, "half")
    with pytest.raises(MnistlrError, match="unknown split 'dev'; accepted: train, val, test"):
        data.load_split(tmp_path, "dev")
