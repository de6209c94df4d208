"""scripts/recall_breakdown.py: the breakdown against a plain loop over the examples, and on a real run folder."""

import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import recall_breakdown  # noqa: E402
import train_synthetic  # noqa: E402

from h3_hf.data.synthetics import load_synthetic  # noqa: E402


class ConstantAnswer(torch.nn.Module):
    """Predicts token ``answer`` at every position."""

    def __init__(self, answer: int, vocab_size: int):
        super().__init__()
        self.answer, self.vocab_size = answer, vocab_size

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.answer] = 1.0
        return type("Output", (), {"logits": logits})


@pytest.mark.parametrize("seq_len", [20, 21])
def test_breakdown_equals_a_loop_over_the_examples(seq_len):
    data = load_synthetic("associative_recall", num_train=300, num_validation=4, num_test=4, seed=3, seq_len=seq_len)
    ids = torch.tensor(data["train"]["input_ids"])
    answer = 5
    report = recall_breakdown.breakdown(ConstantAnswer(answer, 10), ids, seq_len, batch_size=64)
    by_count, by_last, most_frequent, rule = {}, {}, 0, 0
    for row in ids.tolist():
        tokens = row[:seq_len - 2]
        if seq_len % 2:
            assert tokens[0] == 9  # the leading "."
            tokens = tokens[1:]
        pairs = list(zip(tokens[0::2], tokens[1::2]))
        query, target = row[seq_len - 1], row[seq_len]
        count = sum(k == query for k, _ in pairs)
        last = max(i for i, (k, _) in enumerate(pairs) if k == query)
        by_count.setdefault(count, []).append(target == answer)
        by_last.setdefault(last, []).append(target == answer)
        most_frequent += Counter(v for _, v in pairs).most_common(1)[0][0] == answer
        rule += Counter(v for _, v in pairs).most_common(1)[0][0] == target
    assert report["accuracy"] == pytest.approx(float(np.mean(ids[:, -1].numpy() == answer)))
    assert report["answers_most_frequent_value"] == pytest.approx(most_frequent / len(ids))
    assert report["most_frequent_value_rule_accuracy"] == pytest.approx(rule / len(ids))
    assert {g: (c["examples"], c["accuracy"]) for g, c in report["by_query_key_count"].items()} == \
        {g: (len(v), pytest.approx(float(np.mean(v)))) for g, v in by_count.items()}
    assert {g: (c["examples"], c["accuracy"]) for g, c in report["by_last_pair"].items()} == \
        {g: (len(v), pytest.approx(float(np.mean(v)))) for g, v in by_last.items()}


def test_reads_a_run_folder_and_regenerates_its_dataset(tmp_path, capsys):
    results = train_synthetic.main(["--task", "associative_recall", "--output_dir", str(tmp_path), "--seed", "4",
                                    "--num_train", "64", "--num_validation", "16", "--num_test", "16",
                                    "--max_steps", "2", "--disable_tqdm", "true", "--log_level", "error"])
    data = recall_breakdown.run_dataset(results)
    tokenizer = train_synthetic.synthetic_tokenizer(10)
    assert train_synthetic.example_prompt(data["test"][0], tokenizer) == results["example_prompt"]
    report = recall_breakdown.main(["--run_dir", str(tmp_path), "--json", str(tmp_path / "breakdown.json")])
    assert report["examples"] == 16 and sum(c["examples"] for c in report["by_query_key_count"].values()) == 16
    assert report["accuracy"] == pytest.approx(results["eval_accuracy"])
    assert "test split (16 examples)" in capsys.readouterr().out and (tmp_path / "breakdown.json").exists()


def test_refuses_a_folder_of_another_task_in_one_line(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"task": "induction_head"}')
    with pytest.raises(SystemExit) as exit_info:
        recall_breakdown.main(["--run_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "'induction_head' run" in err
