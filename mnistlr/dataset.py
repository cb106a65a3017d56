"""Pure tensor transforms of prepare: normalize, split, subset, label noise."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from mnistlr.idx import NUM_CLASSES


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 784]: scaled to [0, 1], then (x - mean) / std."""
    x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std)


def generator(seed: int, *salt: str) -> torch.Generator:
    """A CPU generator seeded by `seed` and optional names, so each use has its own stream."""
    for s in salt:
        seed = seed * 1_000_003 + zlib.crc32(s.encode())
    return torch.Generator().manual_seed(seed % 2**63)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint (train, val) index sets covering range(n); val has `val_size` items."""
    perm = torch.randperm(n, generator=generator(seed, "split"))
    return perm[val_size:], perm[:val_size]


def subset_size(n: int, fraction: float) -> int:
    """round(fraction * n), at least one."""
    return max(1, round(fraction * n))


def subset_indices(n: int, fraction: float, seed: int) -> torch.Tensor:
    """The first round(fraction*n) of one seeded permutation: smaller subsets nest in larger ones."""
    perm = torch.randperm(n, generator=generator(seed, "subset"))
    return perm[: subset_size(n, fraction)]


def corrupt_labels(
    labels: torch.Tensor, rate: float, gen: torch.Generator, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace exactly round(rate*n) labels with a uniformly drawn *different* class.

    Returns (noisy labels, boolean mask of the changed positions).
    """
    n = labels.shape[0]
    k = round(rate * n)
    changed = torch.zeros(n, dtype=torch.bool)
    changed[torch.randperm(n, generator=gen)[:k]] = True
    # An offset in 1..C-1 (mod C) can never map a class onto itself.
    offset = torch.randint(1, num_classes, (k,), generator=gen)
    noisy = labels.clone()
    noisy[changed] = (labels[changed] + offset) % num_classes
    return noisy, changed


@dataclass(frozen=True)
class Variant:
    """A training-set variant: which training images, and their (possibly noisy) labels."""

    index: torch.Tensor  # int64 positions into the train split
    labels: torch.Tensor  # int64 labels used for training
    changed: torch.Tensor  # bool, True where the label was corrupted

    def summary(self, name: str, fraction: float, noise: float) -> dict:
        """Small JSON-able description: size, class histogram, labels changed."""
        return {
            "name": name,
            "fraction": fraction,
            "noise": noise,
            "size": int(self.index.numel()),
            "labels_changed": int(self.changed.sum()),
            "class_histogram": torch.bincount(self.labels, minlength=NUM_CLASSES).tolist(),
        }


def build_variant(train_labels: torch.Tensor, name: str, fraction: float, noise: float, seed: int) -> Variant:
    """Subset the train split, then corrupt labels; seeded by `seed` and the variant's name."""
    index = subset_indices(train_labels.shape[0], fraction, seed)
    labels, changed = corrupt_labels(train_labels[index], noise, generator(seed, "noise", name))
    return Variant(index=index, labels=labels, changed=changed)
