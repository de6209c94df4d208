"""ListOps (Long Range Arena): nested MAX/MIN/MED/SUM_MOD expressions over digits, 10 classes.

Follows the LRA generator (google-research/long-range-arena, ``lra_benchmarks/data/listops.py``):
a tree is a digit with probability 1 - VALUE_P (always at ``max_depth``), otherwise an operator
applied to 2..max_args sub-trees; trees are drawn until their token length lies in
[min_length, max_length]. Expressions are written without the parentheses LRA strips, e.g.
``[MAX 2 9 [MIN 4 7 ] 0 ]``; the label is the value of the expression (0..9).
"""

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from transformers import PreTrainedTokenizerFast

from .tokenization import build_word_level_tokenizer

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD = "<pad>"
VOCAB = (PAD, *[str(d) for d in range(10)], *OPERATORS, END)
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}
VALUE_P = 0.25


def _tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, budget: int):
    """Random expression as a token list, or None once it exceeds ``budget`` tokens."""
    if depth >= max_depth or rng.random() > VALUE_P:
        return [str(int(rng.integers(10)))]
    tokens = [OPERATORS[int(rng.integers(len(OPERATORS)))]]
    for _ in range(int(rng.integers(2, max_args + 1))):
        sub = _tree(rng, depth + 1, max_depth, max_args, budget - len(tokens))
        if sub is None:
            return None
        tokens += sub
        if len(tokens) > budget:
            return None
    tokens.append(END)
    return tokens


def evaluate_listops(tokens) -> int:
    """Value (0..9) of a ListOps expression given as a token list (independent stack evaluator)."""
    stack = [[]]
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            op, *args = stack.pop()
            if op == "[MIN":
                value = min(args)
            elif op == "[MAX":
                value = max(args)
            elif op == "[MED":
                value = int(np.median(args))
            else:
                value = sum(args) % 10
            stack[-1].append(value)
        else:
            stack[-1].append(int(tok))
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError(f"malformed ListOps expression: {' '.join(tokens)}")
    return stack[0][0]


def generate_listops(num_examples: int, *, min_length: int = 100, max_length: int = 1000, max_depth: int = 10,
                     max_args: int = 10, seed: int = 0) -> list[list[str]]:
    """``num_examples`` distinct expressions of length in [min_length, max_length] tokens."""
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < num_examples:
        tokens = _tree(rng, 1, max_depth, max_args, max_length)
        if tokens is None or not min_length <= len(tokens) <= max_length:
            continue
        key = " ".join(tokens)
        if key not in seen:
            seen.add(key)
            out.append(tokens)
    return out


def load_listops(num_train: int = 5000, num_test: int = 1000, *, min_length: int = 100, max_length: int = 1000,
                 max_depth: int = 10, max_args: int = 10, seed: int = 0) -> DatasetDict:
    """DatasetDict "train"/"test" with ``input_ids`` (variable length), ``attention_mask`` and ``labels``.

    Train and test are drawn from independent streams (seeds ``seed`` and ``seed + 1``) and test
    expressions that also occur in train are replaced. Pad id is 0 (``VOCAB[0]``).
    """
    params = dict(min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args)
    train = generate_listops(num_train, seed=seed, **params)
    train_keys = {" ".join(t) for t in train}
    test = [t for t in generate_listops(num_test + num_test // 10 + 10, seed=seed + 1, **params)
            if " ".join(t) not in train_keys][:num_test]
    features = Features({"input_ids": Sequence(Value("int64")), "attention_mask": Sequence(Value("int8")),
                         "labels": ClassLabel(names=[str(d) for d in range(10)])})

    def to_dataset(exprs):
        ids = [[TOKEN_TO_ID[t] for t in e] for e in exprs]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                                  "labels": [evaluate_listops(e) for e in exprs]}, features=features)

    return DatasetDict(train=to_dataset(train), test=to_dataset(test))


def listops_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer for ListOps text (``"[MAX 2 9 ]"``) whose ids are the dataset's.

    ``<pad>`` is id 0 and padding is on the right, as the classifiers expect.
    """
    return build_word_level_tokenizer(list(VOCAB), padding_side="right", special_tokens={"pad_token": PAD})
