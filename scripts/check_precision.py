"""Half precision against float32: fp16 and bf16, as autocast and as weights loaded with ``dtype=``.

Example:
    python scripts/check_precision.py --json benchmarks/precision.json [--model_dir runs/ar]

Part 1: H3 (LM), S4D and S5 (classifiers) of width 64, 2 layers, random weights, one sequence of ``--length``
(16,384) positions: forward + backward in each precision; prints whether anything is NaN/inf and the error against
the float32 model: logits max |diff| / max |float32|, loss |diff|, gradients ||diff|| / ||float32|| over all
parameters. Part 2 (``--model_dir``: an H3 trained by ``scripts/train_synthetic.py``): greedy generation on the
task's test split in float32, bf16 weights and bf16 autocast; prints the share of generated tokens identical to
float32 and each precision's answer accuracy.
"""

import json
import tempfile

import torch
from bench_common import machine, trained_synthetic_run
from script_utils import ScriptArgumentParser

from h3_hf import (
    H3Config,
    H3ForCausalLM,
    S4DConfig,
    S4DForSequenceClassification,
    S5Config,
    S5ForSequenceClassification,
)

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_model(family: str, width: int):
    torch.manual_seed(0)
    if family == "H3":
        return H3ForCausalLM(H3Config(vocab_size=256, hidden_size=width, num_hidden_layers=2, embedding_dropout=0.0))
    common = dict(input_size=1, hidden_size=width, num_hidden_layers=2, num_labels=10, dropout=0.0)
    if family == "S4D":
        return S4DForSequenceClassification(S4DConfig(**common))
    return S5ForSequenceClassification(S5Config(**common))


def run(model, family: str, length: int, dtype: torch.dtype, autocast: torch.dtype | None):
    """(logits float32, loss, flat gradient float32) of one forward + backward."""
    torch.manual_seed(1)
    if family == "H3":
        ids = torch.randint(0, 256, (1, length))
        inputs = {"input_ids": ids, "labels": ids}
    else:
        inputs = {"inputs_embeds": torch.randn(1, length, 1).to(dtype), "labels": torch.tensor([3])}
    model.zero_grad()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model(**inputs)
    out.loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return out.logits.float().detach(), out.loss.float().item(), grads


def part_one(length: int, width: int) -> list[dict]:
    rows = []
    for family in ("H3", "S4D", "S5"):
        reference = make_model(family, width)
        ref_logits, ref_loss, ref_grads = run(reference, family, length, torch.float32, None)
        with tempfile.TemporaryDirectory() as folder:
            reference.save_pretrained(folder)
            for precision, half in HALF.items():
                loaded = type(reference).from_pretrained(folder, dtype=half)
                for mode, model, autocast in (("autocast", reference, half), ("weights", loaded, None)):
                    logits, loss, grads = run(model, family, length, half if mode == "weights" else torch.float32,
                                              autocast)
                    row = {"model": family, "precision": precision, "mode": mode,
                           "finite": bool(torch.isfinite(logits).all() and torch.isfinite(grads).all()),
                           "logits_error": ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item(),
                           "loss_error": abs(loss - ref_loss),
                           "grad_error": ((grads - ref_grads).norm() / ref_grads.norm()).item()}
                    rows.append(row)
                    print(row, flush=True)
    return rows


def part_two(model_dir: str, new_tokens: int) -> dict:
    results, data = trained_synthetic_run(model_dir)
    examples = torch.tensor(data["test"]["input_ids"])  # (n, seq_len + 1): prompt and answer
    prompts, answers = examples[:, :-1], examples[:, -1]
    variants = {"float32": (H3ForCausalLM.from_pretrained(model_dir), None),
                "bf16 weights": (H3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16), None),
                "bf16 autocast": (H3ForCausalLM.from_pretrained(model_dir), torch.bfloat16)}
    generated = {}
    for name, (model, autocast) in variants.items():
        model.generation_config.eos_token_id = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                 max_new_tokens=new_tokens, do_sample=False)
        generated[name] = out[:, prompts.shape[1]:]
    reference = generated["float32"]
    summary = {name: {"tokens_equal_to_float32": (tokens == reference).float().mean().item(),
                      "answer_accuracy": (tokens[:, 0] == answers).float().mean().item()}
               for name, tokens in generated.items()}
    print(summary, flush=True)
    return {"task": results["task"], "task_params": results["task_params"], "examples": len(prompts),
            "new_tokens": new_tokens, "results": summary}


def main():
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--length", type=int, default=16384, help="sequence length of part 1")
    parser.add_argument("--width", type=int, default=64, help="model width of part 1")
    parser.add_argument("--model_dir", default=None,
                        help="an H3 trained by scripts/train_synthetic.py, for part 2 (default: part 1 only)")
    parser.add_argument("--new_tokens", type=int, default=8, help="tokens generated per prompt in part 2")
    parser.add_argument("--json", default=None, help="also write the results here (default: print only)")
    args = parser.parse_args()
    rows = part_one(args.length, args.width)
    print(f"\nForward + backward at L = {args.length}, width {args.width}, 2 layers, {machine()}")
    print("| model | precision | mode | finite | logits error | loss error | gradient error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['mode']} | {'yes' if r['finite'] else 'NO'} | "
              f"{r['logits_error']:.2e} | {r['loss_error']:.2e} | {r['grad_error']:.2e} |")
    generation = part_two(args.model_dir, args.new_tokens) if args.model_dir else None
    if generation:
        print(f"\nGreedy generation on {generation['task']} ({generation['examples']} test prompts, "
              f"{generation['new_tokens']} new tokens)")
        print("| precision | tokens equal to float32 | answer accuracy |\n|---|---|---|")
        for name, r in generation["results"].items():
            print(f"| {name} | {r['tokens_equal_to_float32']:.2%} | {r['answer_accuracy']:.2%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "rows": rows, "generation": generation}, f, indent=1)


if __name__ == "__main__":
    main()
