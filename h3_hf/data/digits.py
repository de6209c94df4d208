"""Sequential digits: scikit-learn's bundled 8x8 digits read as length-64 pixel sequences."""

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value


def load_sequential_digits(test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """Return a DatasetDict with "train" and "test" splits.

    Each example has ``input_values`` (64, 1) float32 pixels scaled to [0, 1] in row-major order and
    ``labels`` in 0..9. The split is a fixed permutation from ``np.random.RandomState(seed)``
    (default: 1437 train / 360 test examples).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # scikit-learn ships the data: no download

    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32).reshape(-1, 64, 1)
    labels = digits.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    features = Features({"input_values": Sequence(Sequence(Value("float32"))), "labels": Value("int64")})

    def split(idx):
        return Dataset.from_dict({"input_values": pixels[idx].tolist(), "labels": labels[idx].tolist()},
                                 features=features)

    return DatasetDict(train=split(order[n_test:]), test=split(order[:n_test]))
