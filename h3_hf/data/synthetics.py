"""The H3 paper's synthetic language tasks as ``datasets.DatasetDict`` objects (vectorised NumPy).

Vocabulary of ``vocab_size`` ids: plain tokens "0" … "n-1" (n = vocab_size - 2), then the query
prefix "=>" and the no-op filler ".". Every example holds ``seq_len + 1`` tokens: the model reads
``seq_len`` of them (the papers' input length) and the last is the final target. ``labels`` equal
``input_ids`` at the scored positions and -100 elsewhere (the model shifts them, as every HF causal LM).

- induction_head: random plain tokens; "=>" at a random position followed by the token to
  remember; the input ends with "=>" and the answer is that token.
- associative_recall: keys are the lower half of the plain tokens, values the upper half; a fresh
  random key -> value map per example; the input lists (key, value) pairs (keys may repeat, always
  with the same value), then "=>" and a key drawn uniformly among the keys that occur in it (as the
  paper's generator: a key that occurs once is queried as often as one that occurs five times); the
  answer is its value.
- mqar (multi-query AR, "Zoology"): ``num_kv_pairs`` distinct keys with distinct values laid out
  ``k1 v1 k2 v2 …``; filler "." after; each key queried once later (``k v``, the value scored) at
  slots drawn without replacement with weights ∝ slot^(power_a - 1) (short gaps favoured).

Duplicates are removed within a split, and validation/test examples whose (key, value) table also
occurs in the training split are dropped (the table is the whole context for induction head and
associative recall, the ``k1 v1 … kn vn`` prefix for MQAR). Splits draw from independent child
seeds of ``seed``.
"""

import json
import os

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Sequence, Value, load_from_disk
from transformers import PreTrainedTokenizerFast

from .tokenization import build_word_level_tokenizer

SYNTHETIC_TASKS = ("induction_head", "associative_recall", "mqar")
QUERY_TOKEN = "=>"
NOOP_TOKEN = "."
PAD_TOKEN = "<pad>"
#: the paper's settings (vocabulary includes the two special tokens) and Zoology's smallest MQAR
TASK_DEFAULTS = {
    "induction_head": {"vocab_size": 20, "seq_len": 30},
    "associative_recall": {"vocab_size": 10, "seq_len": 20},
    "mqar": {"vocab_size": 8192, "seq_len": 64, "num_kv_pairs": 4, "power_a": 0.01},
}
FEATURES = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})


def _fail(field: str, value, allowed: str):
    raise ValueError(f"{field}={value!r} is invalid: {allowed}")


def task_parameters(task: str, *, vocab_size: int | None = None, seq_len: int | None = None,
                    num_kv_pairs: int | None = None, power_a: float | None = None) -> dict:
    """Fill defaults for ``task`` and validate; returns the generator's keyword arguments."""
    if task not in SYNTHETIC_TASKS:
        _fail("task", task, f"allowed values are {SYNTHETIC_TASKS}")
    params = dict(TASK_DEFAULTS[task])
    given = {"vocab_size": vocab_size, "seq_len": seq_len, "num_kv_pairs": num_kv_pairs, "power_a": power_a}
    for name, value in given.items():
        if value is None:
            continue
        if name not in params:
            _fail(name, value, f"not a parameter of task {task!r} (parameters: {sorted(params)})")
        params[name] = value
    for name in ("vocab_size", "seq_len") + (("num_kv_pairs",) if task == "mqar" else ()):
        if not isinstance(params[name], (int, np.integer)) or params[name] <= 0:
            _fail(name, params[name], "must be a positive integer")
    plain = params["vocab_size"] - 2
    if plain < 2:
        _fail("vocab_size", params["vocab_size"], "must be >= 4: two plain tokens plus the specials '=>' and '.'")
    if task == "induction_head":
        if params["seq_len"] < 3:
            _fail("seq_len", params["seq_len"], "induction_head needs >= 3 (prefix, token, final prefix)")
    elif task == "associative_recall":
        if params["seq_len"] < 4:
            _fail("seq_len", params["seq_len"], "associative_recall needs >= 4 (one pair, prefix, query key)")
    else:
        n = params["num_kv_pairs"]
        if plain // 2 < n:
            _fail("vocab_size", params["vocab_size"],
                  f"mqar with num_kv_pairs={n} needs >= {n} distinct keys and values: vocab_size >= {2 * n + 2}")
        if params["seq_len"] + 1 < 4 * n:
            _fail("seq_len", params["seq_len"], f"mqar with num_kv_pairs={n} needs seq_len >= {4 * n - 1} "
                  "(the pairs, then one query slot per key)")
        if not 0 < params["power_a"] <= 1:
            _fail("power_a", params["power_a"], "must be in (0, 1]")
    return params


def _distinct(rng: np.random.Generator, rows: int, k: int, high: int) -> np.ndarray:
    """(rows, k) integers in [0, high), distinct within each row, in random order."""
    if rows * high <= 20_000_000 or 4 * k > high:
        return np.argsort(rng.random((rows, high)), axis=1)[:, :k]
    out = rng.integers(0, high, (rows, k))
    while True:  # rejection: few rows have a collision when k << high
        s = np.sort(out, axis=1)
        bad = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not bad.any():
            return out
        out[bad] = rng.integers(0, high, (int(bad.sum()), k))


def _induction_head(rng, n, vocab_size, seq_len):
    plain, query = vocab_size - 2, vocab_size - 2
    ids = rng.integers(0, plain, (n, seq_len + 1))
    rows = np.arange(n)
    prefix_at = rng.integers(0, seq_len - 2, n)  # first "=>"; the remembered token follows it
    ids[rows, prefix_at] = query
    ids[:, seq_len - 1] = query
    ids[:, seq_len] = ids[rows, prefix_at + 1]
    labels = np.full_like(ids, -100)
    labels[:, seq_len] = ids[:, seq_len]
    return ids, labels, ids[:, :seq_len]


def _associative_recall(rng, n, vocab_size, seq_len):
    plain = vocab_size - 2
    num_keys = plain // 2
    num_pairs, lead = divmod(seq_len - 2, 2)
    table = rng.integers(num_keys, plain, (n, num_keys))  # key -> value, fresh per example
    keys = rng.integers(0, num_keys, (n, num_pairs))
    values = np.take_along_axis(table, keys, axis=1)
    present = np.zeros((n, num_keys), dtype=bool)
    np.put_along_axis(present, keys, True, axis=1)
    query = np.where(present, rng.random((n, num_keys)), -1.0).argmax(axis=1)  # uniform over the keys present
    ids = np.full((n, seq_len + 1), vocab_size - 1)  # a leading "." when seq_len is odd
    ids[:, lead:lead + 2 * num_pairs:2] = keys
    ids[:, lead + 1:lead + 2 * num_pairs:2] = values
    ids[:, seq_len - 2] = vocab_size - 2
    ids[:, seq_len - 1] = query
    ids[:, seq_len] = table[np.arange(n), query]
    labels = np.full_like(ids, -100)
    labels[:, seq_len] = ids[:, seq_len]
    return ids, labels, ids[:, :seq_len - 2]


def _mqar(rng, n, vocab_size, seq_len, num_kv_pairs, power_a):
    plain = vocab_size - 2
    num_keys = plain // 2
    keys = _distinct(rng, n, num_kv_pairs, num_keys)
    values = num_keys + _distinct(rng, n, num_kv_pairs, plain - num_keys)
    context = 2 * num_kv_pairs
    slots = (seq_len + 1 - context) // 2
    # weighted sampling without replacement = top-k of log-weight + Gumbel noise (keeps the draw order)
    log_w = (power_a - 1) * np.log(np.arange(1, slots + 1))
    score = log_w + rng.gumbel(size=(n, slots))
    gaps = np.argsort(-score, axis=1)[:, :num_kv_pairs]
    ids = np.full((n, seq_len + 1), vocab_size - 1)
    ids[:, 0:context:2] = keys
    ids[:, 1:context:2] = values
    rows = np.arange(n)[:, None]
    ids[rows, context + 2 * gaps] = keys
    ids[rows, context + 2 * gaps + 1] = values
    labels = np.full_like(ids, -100)
    labels[rows, context + 2 * gaps + 1] = values
    return ids, labels, ids[:, :context]


GENERATORS = {"induction_head": _induction_head, "associative_recall": _associative_recall, "mqar": _mqar}


def _row_keys(a: np.ndarray) -> list[bytes]:
    a = np.ascontiguousarray(a, dtype=np.int64)
    return [row.tobytes() for row in a]


def _list_column(a: np.ndarray) -> pa.ListArray:
    """(rows, length) array -> Arrow list<int32> column without a Python loop (from_dict is ~20x slower)."""
    rows, length = a.shape
    offsets = np.arange(0, rows * length + 1, length, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(a, dtype=np.int32).ravel()))


def _draw_split(task, params, num_examples, rng, forbidden_tables: set[bytes]):
    """``num_examples`` distinct examples whose tables are not in ``forbidden_tables``."""
    ids_parts, label_parts, tables = [], [], []
    seen: set[bytes] = set()
    have = 0
    for _ in range(20):
        want = num_examples - have
        ids, labels, table = GENERATORS[task](rng, int(want * 1.1) + 16, **params)
        keep = []
        for i, (row, tab) in enumerate(zip(_row_keys(ids), _row_keys(table))):
            if row not in seen and tab not in forbidden_tables:
                seen.add(row)
                keep.append(i)
                if len(keep) == want:
                    break
        keep = np.asarray(keep, dtype=np.int64)
        ids_parts.append(ids[keep])
        label_parts.append(labels[keep])
        tables.append(table[keep])
        have += len(keep)
        if have == num_examples:
            return np.concatenate(ids_parts), np.concatenate(label_parts), np.concatenate(tables)
    _fail("num_examples", num_examples, f"more than the distinct examples task {task!r} yields with {params}")


def load_synthetic(task: str, *, num_train: int = 5000, num_validation: int = 500, num_test: int = 500,
                   seed: int = 0, vocab_size: int | None = None, seq_len: int | None = None,
                   num_kv_pairs: int | None = None, power_a: float | None = None) -> DatasetDict:
    """Generate a task as a ``DatasetDict`` with "train", "validation" and "test" splits.

    Columns ``input_ids`` and ``labels`` (seq_len + 1 int32 each). The task parameters are stored as
    JSON in every split's ``info.description`` (read them with :func:`synthetic_parameters`).
    Deterministic for a seed; each split draws from its own child seed.
    """
    params = task_parameters(task, vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs,
                             power_a=power_a)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or size <= 0:
            _fail(f"num_{name}", size, "must be a positive integer")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        _fail("seed", seed, "must be a non-negative integer")
    rngs = dict(zip(sizes, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))))
    forbidden: set[bytes] = set()
    splits = {}
    for name, size in sizes.items():
        ids, labels, tables = _draw_split(task, params, size, rngs[name], forbidden)
        forbidden.update(_row_keys(tables))  # later splits never reuse an earlier split's table
        meta = {"task": task, **params, "num_examples": size, "split": name, "seed": seed,
                "tokens": {"query": QUERY_TOKEN, "noop": NOOP_TOKEN, "pad": PAD_TOKEN}}
        info = DatasetInfo(description=json.dumps(meta), dataset_name=f"h3-synthetics-{task}", config_name=task,
                           features=FEATURES)
        table = pa.table({"input_ids": _list_column(ids), "labels": _list_column(labels)})
        splits[name] = Dataset(table, info=info, split=name)
    return DatasetDict(splits)


def synthetic_parameters(dataset: Dataset | DatasetDict) -> dict:
    """The task parameters stored in a split's ``info.description`` (task, vocab_size, seq_len, …)."""
    split = dataset["train"] if isinstance(dataset, DatasetDict) else dataset
    try:
        return json.loads(split.info.description)
    except (TypeError, ValueError) as err:
        raise ValueError("dataset has no synthetic-task parameters in info.description") from err


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer for a task vocabulary: ids 0..vocab_size-1 as in the data, ``<pad>`` after.

    Text is whitespace separated: ``"0 5 1 6 => 1"``. Padding is on the left (for generation).
    """
    if vocab_size < 4:
        _fail("vocab_size", vocab_size, "must be >= 4")
    vocabulary = [str(i) for i in range(vocab_size - 2)] + [QUERY_TOKEN, NOOP_TOKEN]
    return build_word_level_tokenizer(vocabulary, special_tokens={"pad_token": PAD_TOKEN})


def save_synthetic(dataset: DatasetDict, path: str) -> None:
    """``save_to_disk`` the dataset and save its tokenizer in ``path/tokenizer``."""
    dataset.save_to_disk(path)
    synthetic_tokenizer(synthetic_parameters(dataset)["vocab_size"]).save_pretrained(os.path.join(path, "tokenizer"))


def load_synthetic_from_disk(path: str) -> tuple[DatasetDict, PreTrainedTokenizerFast]:
    """Inverse of :func:`save_synthetic`: (dataset, tokenizer)."""
    return load_from_disk(path), PreTrainedTokenizerFast.from_pretrained(os.path.join(path, "tokenizer"))


def answer_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Exact-match accuracy over scored positions.

    predictions: (batch, length) argmax token ids of the logits; labels: (batch, length) unshifted, so the
    prediction for labels[:, t] is predictions[:, t - 1].
    """
    predictions = np.asarray(predictions)[:, :-1]
    targets = np.asarray(labels)[:, 1:]
    scored = targets != -100
    if not scored.any():
        raise ValueError("labels have no scored positions (all -100)")
    return float((predictions[scored] == targets[scored]).mean())


__all__ = [
    "SYNTHETIC_TASKS",
    "TASK_DEFAULTS",
    "task_parameters",
    "load_synthetic",
    "synthetic_parameters",
    "synthetic_tokenizer",
    "save_synthetic",
    "load_synthetic_from_disk",
    "answer_accuracy",
]
