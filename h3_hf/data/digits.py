"""Sequential digits: scikit-learn's bundled 8x8 digits read as length-64 pixel sequences."""

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value


def _digits(test_fraction: float, seed: int):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # scikit-learn ships the data: no download

    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32).reshape(-1, 64, 1)
    labels = digits.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    return pixels, labels, order[n_test:], order[:n_test]


def load_sequential_digits(test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """Return a DatasetDict with "train" and "test" splits.

    Each example has ``input_values`` (64, 1) float32 pixels scaled to [0, 1] in row-major order and
    ``labels`` in 0..9. The split is a fixed permutation from ``np.random.RandomState(seed)``
    (default: 1438 train / 359 test examples).
    """
    pixels, labels, train, test = _digits(test_fraction, seed)
    features = Features({"input_values": Sequence(Sequence(Value("float32"))), "labels": Value("int64")})

    def split(idx):
        return Dataset.from_dict({"input_values": pixels[idx].tolist(), "labels": labels[idx].tolist()},
                                 features=features)

    return DatasetDict(train=split(train), test=split(test))


def load_irregular_digits(drop_fraction: float = 0.3, test_fraction: float = 0.2, seed: int = 0,
                          drop_seed: int = 0) -> DatasetDict:
    """Sequential digits with a random ``drop_fraction`` of each image's pixels removed (irregular sampling).

    Same split as :func:`load_sequential_digits`. Each example keeps ``round(64 * (1 - drop_fraction))``
    pixels in their original order: ``input_values`` (kept, 1) and ``timesteps`` (kept,) float32, the gap
    in pixel positions since the previous kept pixel (the first counts from position -1), so a model
    that reads the timesteps knows where each pixel was; ``labels`` in 0..9.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    pixels, labels, train, test = _digits(test_fraction, seed)
    keep = int(round(64 * (1 - drop_fraction)))
    rng = np.random.default_rng(drop_seed)
    positions = np.sort(np.argsort(rng.random((len(labels), 64)), axis=1)[:, :keep], axis=1)  # (n, keep)
    values = np.take_along_axis(pixels[..., 0], positions, axis=1)[..., None]
    gaps = np.diff(positions, axis=1, prepend=-1).astype(np.float32)
    features = Features({"input_values": Sequence(Sequence(Value("float32"))), "timesteps": Sequence(Value("float32")),
                         "labels": Value("int64")})

    def split(idx):
        return Dataset.from_dict({"input_values": values[idx].tolist(), "timesteps": gaps[idx].tolist(),
                                  "labels": labels[idx].tolist()}, features=features)

    return DatasetDict(train=split(train), test=split(test))
