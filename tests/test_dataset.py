import pytest
import torch

from mnistlr.dataset import (
    build_variant,
    corrupt_labels,
    generator,
    normalize,
    split_indices,
    subset_indices,
    subset_size,
)


def test_normalize_scales_then_standardizes_and_flattens():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = normalize(images, mean=0.1307, std=0.3081)
    assert x.shape == (1, 4) and x.dtype == torch.float32
    expected = (torch.tensor([0.0, 1.0, 0.2, 0.4]) - 0.1307) / 0.3081
    assert torch.allclose(x[0], expected, atol=1e-6)


def test_normalized_real_training_images_have_mnist_statistics(real_mirror):
    from mnistlr import idx

    x = normalize(idx.read_images(real_mirror / "train-images-idx3-ubyte.gz"), 0.1307, 0.3081)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


def test_split_is_disjoint_complete_and_seeded():
    train, val = split_indices(60000, 10000, seed=7)
    assert len(train) == 50000 and len(val) == 10000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    assert not set(train.tolist()) & set(val.tolist())
    again = split_indices(60000, 10000, seed=7)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    other = split_indices(60000, 10000, seed=8)
    assert not torch.equal(val, other[1])


@pytest.mark.parametrize("fraction,size", [(0.1, 5000), (0.25, 12500), (0.5, 25000), (1.0, 50000)])
def test_subset_sizes(fraction, size):
    idx = subset_indices(50000, fraction, seed=0)
    assert subset_size(50000, fraction) == size == len(idx) == len(set(idx.tolist()))


def test_smaller_subsets_nest_in_larger_ones():
    small, large = subset_indices(1000, 0.1, 3), subset_indices(1000, 0.5, 3)
    assert set(small.tolist()) <= set(large.tolist())


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.9])
def test_noise_changes_exactly_round_rate_n_labels_each_to_a_different_class(rate):
    labels = torch.randint(0, 10, (5003,), generator=torch.Generator().manual_seed(1))
    noisy, changed = corrupt_labels(labels, rate, generator(0, "t"))
    assert int(changed.sum()) == round(rate * 5003)
    assert bool((noisy[changed] != labels[changed]).all())  # every corrupted label is wrong
    assert torch.equal(noisy[~changed], labels[~changed])  # the rest are intact
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9


def test_noise_reaches_every_other_class():
    labels = torch.zeros(20000, dtype=torch.int64)
    noisy, changed = corrupt_labels(labels, 0.5, generator(0, "t"))
    counts = torch.bincount(noisy[changed], minlength=10)
    assert counts[0] == 0 and bool((counts[1:] > 900).all())


def test_variant_summary_counts():
    labels = torch.arange(1000) % 10
    v = build_variant(labels, "noisy", 0.5, 0.1, seed=1)
    s = v.summary("noisy", 0.5, 0.1)
    assert s["size"] == 500 and s["labels_changed"] == 50 and sum(s["class_histogram"]) == 500
    w = build_variant(labels, "noisy", 0.5, 0.1, seed=1)
    assert torch.equal(v.labels, w.labels) and torch.equal(v.index, w.index)
