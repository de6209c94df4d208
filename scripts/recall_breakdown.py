"""Where an associative-recall model goes wrong: its answer accuracy broken down by the prompt's layout.

Example:
    python scripts/recall_breakdown.py --run_dir runs/ar-h3
    python scripts/recall_breakdown.py --run_dir runs/ar-h3 --split train --json breakdown.json

Reads a folder written by train_synthetic.py --task associative_recall (the model and results.json), generates the
run's dataset again from the seed and sizes in results.json, and scores the final answer of every example of
--split (default: test): overall; by how often the query key occurs in the prompt; by the pair where it occurs last;
and how often the model answers the value that occurs most often in the prompt (a rule that needs no key-value
binding, and what a model on the early plateau of this task tends to learn), with the accuracy of that rule itself.
A model that memorised its training examples scores far higher on --split train than on test.
"""

import json
import os
import sys
from collections import Counter

import numpy as np
import torch
from script_utils import ScriptArgumentParser

from h3_hf import H3ForCausalLM
from h3_hf.data.synthetics import load_synthetic

SPLITS = ("train", "validation", "test")


def parse_args(argv: list[str]):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--run_dir", required=True, help="OUTPUT_DIR of a train_synthetic.py associative-recall run")
    parser.add_argument("--split", choices=SPLITS, default="test", help="(default: test)")
    parser.add_argument("--json", default=None, help="also write the breakdown to this file (default: none)")
    args = parser.parse_args(argv)
    path = os.path.join(args.run_dir, "results.json")
    if not os.path.isfile(path):
        parser.error(f"argument --run_dir: no results.json in {args.run_dir} (expected the OUTPUT_DIR of a "
                     "train_synthetic.py run)")
    with open(path) as f:
        results = json.load(f)
    if results.get("task") != "associative_recall":
        parser.error(f"argument --run_dir: {args.run_dir} holds a {results.get('task')!r} run; this breakdown is for "
                     "associative_recall")
    return args, results


def run_dataset(results: dict):
    """The run's dataset, generated again from its results.json (the generator is deterministic for a seed)."""
    run_args, params = results["args"], results["task_params"]
    seed = results["seed"] if run_args.get("dataset_seed") is None else run_args["dataset_seed"]
    return load_synthetic("associative_recall", num_train=run_args["num_train"],
                          num_validation=run_args["num_validation"], num_test=run_args["num_test"], seed=seed,
                          vocab_size=params["vocab_size"], seq_len=params["seq_len"])


def breakdown(model: H3ForCausalLM, input_ids: torch.Tensor, seq_len: int, batch_size: int = 500) -> dict:
    """Answer accuracy of ``model`` on (n, seq_len + 1) examples: overall, by the query key's count and last pair."""
    with torch.no_grad():
        predictions = torch.cat([model(input_ids=batch[:, :-1]).logits[:, -1].argmax(-1)
                                 for batch in input_ids.split(batch_size)]).numpy()
    ids = input_ids.numpy()
    answers, query = ids[:, -1], ids[:, seq_len - 1]
    lead = (seq_len - 2) % 2  # a leading "." when seq_len is odd
    keys, values = ids[:, lead:seq_len - 2:2], ids[:, lead + 1:seq_len - 2:2]
    correct = predictions == answers
    is_query = keys == query[:, None]
    counts = is_query.sum(1)
    last_pair = keys.shape[1] - 1 - np.argmax(is_query[:, ::-1], axis=1)
    most_frequent = np.array([Counter(row).most_common(1)[0][0] for row in values])

    def by(groups: np.ndarray) -> dict:
        return {int(g): {"examples": int((groups == g).sum()), "accuracy": float(correct[groups == g].mean())}
                for g in np.unique(groups)}

    return {"examples": len(ids), "accuracy": float(correct.mean()),
            "answers_most_frequent_value": float((predictions == most_frequent).mean()),
            "most_frequent_value_rule_accuracy": float((most_frequent == answers).mean()),
            "by_query_key_count": by(counts), "by_last_pair": by(last_pair)}


def main(argv=None):
    args, results = parse_args(sys.argv[1:] if argv is None else argv)
    data = run_dataset(results)
    model = H3ForCausalLM.from_pretrained(args.run_dir).eval()
    report = breakdown(model, torch.tensor(data[args.split]["input_ids"]), results["task_params"]["seq_len"])
    print(f"{args.run_dir}, {args.split} split ({report['examples']} examples): accuracy {report['accuracy']:.1%}; "
          f"answers the prompt's most frequent value {report['answers_most_frequent_value']:.1%} (that rule alone "
          f"answers {report['most_frequent_value_rule_accuracy']:.1%} right)")
    for title, key in (("query key occurs", "by_query_key_count"), ("last occurrence at pair", "by_last_pair")):
        for group, cell in report[key].items():
            print(f"  {title} {group}: {cell['accuracy']:.1%} of {cell['examples']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run_dir": args.run_dir, "split": args.split, **report}, f, indent=2)
    return report


if __name__ == "__main__":
    main()
