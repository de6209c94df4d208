"""Synthetic tasks: every example checked against the task definition by an independent (loop) checker."""

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from h3_hf.data.synthetics import (
    SYNTHETIC_TASKS,
    answer_accuracy,
    load_synthetic,
    load_synthetic_from_disk,
    save_synthetic,
    synthetic_parameters,
    synthetic_tokenizer,
)

SMALL = {
    "induction_head": dict(vocab_size=20, seq_len=30),
    "associative_recall": dict(vocab_size=10, seq_len=21),  # odd: a leading filler token
    "mqar": dict(vocab_size=64, seq_len=40, num_kv_pairs=6),
}


def check_induction_head(ids, labels, vocab_size, seq_len):
    """Returns the example's context (its 'table'); asserts the definition."""
    query = vocab_size - 2
    assert len(ids) == seq_len + 1
    prefixes = [i for i, t in enumerate(ids[:seq_len]) if t == query]
    assert len(prefixes) == 2 and prefixes[1] == seq_len - 1 and prefixes[0] + 1 < seq_len - 1
    assert all(0 <= t < query for i, t in enumerate(ids[:seq_len]) if i not in prefixes)
    assert ids[seq_len] == ids[prefixes[0] + 1]
    assert labels[:seq_len] == [-100] * seq_len and labels[seq_len] == ids[seq_len]
    return tuple(ids[:seq_len])


def check_associative_recall(ids, labels, vocab_size, seq_len):
    plain = vocab_size - 2
    keys = range(plain // 2)
    query, noop = plain, plain + 1
    assert ids[seq_len - 2] == query
    body = list(ids[:seq_len - 2])
    if len(body) % 2:
        assert body.pop(0) == noop
    table = {}
    for key, value in zip(body[::2], body[1::2]):
        assert key in keys and plain // 2 <= value < plain
        assert table.setdefault(key, value) == value, "a key maps to one value within an example"
    assert ids[seq_len - 1] in table
    assert ids[seq_len] == table[ids[seq_len - 1]]
    assert labels == [-100] * seq_len + [ids[seq_len]]
    return tuple(ids[:seq_len - 2])


def check_mqar(ids, labels, vocab_size, seq_len, num_kv_pairs):
    plain = vocab_size - 2
    noop = plain + 1
    n = num_kv_pairs
    keys, values = ids[0:2 * n:2], ids[1:2 * n:2]
    assert len(set(keys)) == n and all(0 <= k < plain // 2 for k in keys)
    assert len(set(values)) == n and all(plain // 2 <= v < plain for v in values)
    table = dict(zip(keys, values))
    queried = []
    i = 2 * n
    expected_labels = [-100] * (seq_len + 1)
    while i <= seq_len:
        if ids[i] == noop:
            i += 1
            continue
        assert (i - 2 * n) % 2 == 0 and ids[i] in table and ids[i + 1] == table[ids[i]]
        queried.append(ids[i])
        expected_labels[i + 1] = ids[i + 1]
        i += 2
    assert sorted(queried) == sorted(keys), "every key is queried exactly once"
    assert labels == expected_labels
    return tuple(ids[:2 * n])


CHECKERS = {"induction_head": check_induction_head, "associative_recall": check_associative_recall,
            "mqar": check_mqar}


@pytest.fixture(scope="module")
def datasets():
    return {task: load_synthetic(task, num_train=2000, num_validation=200, num_test=300, seed=3, **SMALL[task])
            for task in SYNTHETIC_TASKS}


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_every_example_satisfies_the_task_definition_and_tables_do_not_leak(task, datasets):
    data = datasets[task]
    params = {k: v for k, v in synthetic_parameters(data).items() if k in SMALL[task]}
    assert params == SMALL[task]
    tables, rows = {}, {}
    for split in ("train", "validation", "test"):
        ids, labels = data[split]["input_ids"], data[split]["labels"]
        tables[split] = [CHECKERS[task](a, b, **params) for a, b in zip(ids, labels)]
        rows[split] = {tuple(a) for a in ids}
        assert len(rows[split]) == len(ids), "duplicates removed within a split"
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (2000, 200, 300)
    assert not set(tables["test"]) & set(tables["train"])
    assert not set(tables["validation"]) & set(tables["train"])
    assert not set(tables["test"]) & set(tables["validation"])


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_deterministic_per_seed_and_different_across_seeds_and_splits(task, datasets):
    again = load_synthetic(task, num_train=2000, num_validation=200, num_test=300, seed=3, **SMALL[task])
    for split in again:
        assert again[split]["input_ids"] == datasets[task][split]["input_ids"]
    other = load_synthetic(task, num_train=2000, num_validation=200, num_test=300, seed=4, **SMALL[task])
    assert other["train"]["input_ids"] != datasets[task]["train"]["input_ids"]
    first = datasets[task]
    assert first["train"]["input_ids"][:200] != first["validation"]["input_ids"]
    assert synthetic_parameters(other)["seed"] == 4


def test_answers_are_spread_over_the_answer_vocabulary(datasets):
    """The answer is not predictable without reading the context (e.g. not always the same token)."""
    for task, data in datasets.items():
        labels = np.asarray(data["train"]["labels"])
        answers = labels[labels != -100]
        n_answers = {"induction_head": 18, "associative_recall": 4, "mqar": 31}[task]
        assert len(np.unique(answers)) == n_answers
        counts = np.bincount(answers)[np.unique(answers)]
        assert counts.max() < 3 * counts.min() + 20


def test_mqar_query_gaps_favour_short_distances(datasets):
    data = datasets["mqar"]["train"]
    n = SMALL["mqar"]["num_kv_pairs"]
    slots = []
    for ids in data["input_ids"]:
        slots += [(i - 2 * n) // 2 for i in range(2 * n, len(ids) - 1) if ids[i] < 31 and (i - 2 * n) % 2 == 0]
    counts = np.bincount(slots)
    assert counts[:3].sum() > counts[-3:].sum()


def test_associative_recall_queries_a_key_uniformly_among_the_keys_present():
    """The paper's query: every key of the prompt equally likely, however often it occurs.

    Counted over prompts: how often the query is a key that occurs once, against the expectation under a uniform
    draw over the distinct keys (sum of singletons / distinct keys) and under a draw of a random pair (sum of
    singletons / pairs), which favours frequent keys.
    """
    data = load_synthetic("associative_recall", num_train=20000, num_validation=10, num_test=10, seed=5)
    seq_len = synthetic_parameters(data)["seq_len"]
    observed = uniform = by_pair = 0.0
    for ids in data["train"]["input_ids"]:
        keys = ids[:seq_len - 2:2]
        counts = {k: keys.count(k) for k in keys}
        singletons = sum(c == 1 for c in counts.values())
        observed += counts[ids[seq_len - 1]] == 1
        uniform += singletons / len(counts)
        by_pair += singletons / len(keys)
    sigma = (uniform * (1 - uniform / 20000)) ** 0.5
    assert abs(observed - uniform) < 4 * sigma, (observed, uniform, by_pair)
    assert uniform - by_pair > 10 * sigma  # the test tells the two draws apart


@pytest.mark.parametrize("task,kw,field", [
    ("mqar", dict(vocab_size=20, num_kv_pairs=10), "vocab_size"),
    ("mqar", dict(vocab_size=100, seq_len=30, num_kv_pairs=8), "seq_len"),
    ("associative_recall", dict(seq_len=3), "seq_len"),
    ("associative_recall", dict(vocab_size=3), "vocab_size"),
    ("induction_head", dict(seq_len=2), "seq_len"),
    ("induction_head", dict(num_kv_pairs=2), "num_kv_pairs"),
    ("copying", dict(), "task"),
    ("mqar", dict(power_a=0.0), "power_a"),
    ("induction_head", dict(num_train=0), "num_train"),
])
def test_bad_parameters_raise_value_error_naming_the_parameter(task, kw, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        load_synthetic(task, **kw)


def test_too_many_examples_for_the_task_space_is_an_error():
    with pytest.raises(ValueError, match="num_examples"):
        load_synthetic("associative_recall", vocab_size=4, seq_len=4, num_train=100)


def test_large_generation_is_vectorised():
    data = load_synthetic("mqar", num_train=20000, num_validation=10, num_test=10, seq_len=256, num_kv_pairs=16)
    assert len(data["train"]) == 20000 and len(data["train"][0]["input_ids"]) == 257


def test_save_to_disk_round_trip_with_tokenizer(tmp_path, datasets):
    data = datasets["associative_recall"]
    save_synthetic(data, str(tmp_path / "ar"))
    loaded, tok = load_synthetic_from_disk(str(tmp_path / "ar"))
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert loaded["test"]["input_ids"] == data["test"]["input_ids"]
    assert synthetic_parameters(loaded["test"]) == synthetic_parameters(data["test"])
    ids = data["test"][0]["input_ids"]
    text = tok.decode(ids)
    assert text.split()[-3] == "=>" and all(t.isdigit() or t in ("=>", ".") for t in text.split())
    assert tok(text)["input_ids"] == ids
    assert len(tok) == synthetic_parameters(data)["vocab_size"] + 1 and tok.pad_token == "<pad>"
    assert tok.padding_side == "left"


def test_synthetic_tokenizer_uses_data_ids():
    tok = synthetic_tokenizer(10)
    assert tok("0 7 => 3 .")["input_ids"] == [0, 7, 8, 3, 9]


def test_answer_accuracy_scores_only_labelled_positions():
    labels = np.array([[-100, -100, 5], [-100, 4, -100]])
    predictions = np.array([[9, 5, 0], [4, 0, 0]])  # prediction for labels[:, t] sits at t - 1
    assert answer_accuracy(predictions, labels) == 1.0
    assert answer_accuracy(np.zeros_like(predictions), labels) == 0.0
    with pytest.raises(ValueError, match="scored"):
        answer_accuracy(predictions, np.full_like(labels, -100))
