"""An H3 trained on short sequences, evaluated and generating with 16k-64k tokens of context.

Example:
    python scripts/check_long_context.py --model_dir runs/ih256 --json benchmarks/long_context.json

For each context length L, ``--prompts`` sequences of L tokens: earlier examples of the model's synthetic task
(complete, with their answers) as the distant past, then one test prompt whose answer is scored; and (tasks whose
length is free: induction head, MQAR) the task itself generated at length L. The prefill (one
forward over all L positions) is the evaluation: answer accuracy and whether every logit is finite. Then
``--decode_tokens`` greedy steps from the prefilled cache: the cache's size after the prefill and after decoding,
the growth of the process's resident memory while decoding, and ms per step. Accuracy at the training length (no
distant past) is the reference row.
"""

import functools
import json
import os
import time

import torch
from bench_common import machine, trained_synthetic_run
from bench_generation import cache_tensors
from script_utils import ScriptArgumentParser

from h3_hf import H3ForCausalLM
from h3_hf.data.synthetics import load_synthetic
from h3_hf.modeling_h3 import CACHE_FIELD


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def task_at_length(results: dict, count: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, context) prompts of the model's task itself generated at ``seq_len=context`` (a seed the run did not
    use), and their answers."""
    params = results["task_params"]
    task = {k: params[k] for k in ("vocab_size", "num_kv_pairs", "power_a") if k in params}
    data = load_synthetic(results["task"], seq_len=context, num_train=count, num_validation=1, num_test=1,
                          seed=params["seed"] + 1000, **task)
    examples = torch.tensor(data["train"]["input_ids"])
    return examples[:, :-1], examples[:, -1]


def long_prompts(examples: torch.Tensor, first: int, count: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, context) ids: complete examples (n, seq_len + 1) drawn at random (with replacement, never the scored
    ones) as the distant past, then the prompt (first seq_len tokens) of example i for i in [first, first + count);
    and the (count,) answers."""
    n, width = examples.shape
    prompts, answers = examples[first:first + count, :-1], examples[first:first + count, -1]
    past = context - prompts.shape[1]
    rows = []
    for i in range(first, first + count):
        drawn = torch.randint(0, n - 1, (-(-past // width),), generator=torch.Generator().manual_seed(i))
        drawn = drawn + (drawn >= i).long()  # skip example i itself
        rows.append(torch.cat([examples[drawn].flatten()[len(drawn) * width - past:], prompts[i - first]]))
    return torch.stack(rows), answers


@torch.no_grad()
def measure(model, build, prompts: int, batch: int, context: int, decode_tokens: int) -> dict:
    """Accuracy over ``prompts`` prompts of ``context`` tokens from ``build(first, count, context)`` (prefilled
    ``batch`` at a time), then decoding from the last batch's cache."""
    correct, finite, prefill_seconds = 0, True, 0.0
    for first in range(0, prompts, batch):
        ids, answers = build(first, min(batch, prompts - first), context)
        assert ids.shape[1] == context
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill_seconds += time.perf_counter() - start
        correct += (out.logits[:, -1].argmax(-1) == answers).sum().item()
        finite &= bool(torch.isfinite(out.logits).all())
    row = {"context": context, "prompts": prompts, "prefill_seconds_per_prompt": prefill_seconds / prompts,
           "accuracy": correct / prompts}
    if decode_tokens:
        token, cache = out.logits[:, -1:].argmax(-1), getattr(out, CACHE_FIELD)
        del out
        cache_before, rss_before = sum(t.nbytes for t in cache_tensors(cache)), resident_bytes()
        start = time.perf_counter()
        for _ in range(decode_tokens):
            step = model(input_ids=token, past_key_values=cache, use_cache=True)
            token, cache = step.logits[:, -1:].argmax(-1), getattr(step, CACHE_FIELD)
            finite &= bool(torch.isfinite(step.logits).all())
        row.update(decode_batch=token.shape[0], decode_ms_per_step=1e3 * (time.perf_counter() - start) / decode_tokens,
                   cache_bytes_after_prefill=cache_before,
                   cache_bytes_after_decode=sum(t.nbytes for t in cache_tensors(cache)),
                   rss_growth_while_decoding=resident_bytes() - rss_before)
    row["finite"] = finite
    print(row, flush=True)
    return row


def main():
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--model_dir", required=True, help="an H3 trained by scripts/train_synthetic.py")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16384, 32768, 65536], help="context lengths L")
    parser.add_argument("--prompts", type=int, default=64, help="scored prompts per context")
    parser.add_argument("--batch", type=int, default=8, help="prompts prefilled together (and decoded together)")
    parser.add_argument("--decode_tokens", type=int, default=256, help="greedy steps after each prefill")
    parser.add_argument("--json", default=None, help="also write the results here (default: print only)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results, data = trained_synthetic_run(args.model_dir)
    params, examples = results["task_params"], torch.tensor(data["test"]["input_ids"])
    model = H3ForCausalLM.from_pretrained(args.model_dir).eval()
    after_examples = functools.partial(long_prompts, examples)
    rows = [dict(measure(model, after_examples, args.prompts, args.batch, params["seq_len"], 0), past="none")]
    rows += [dict(measure(model, after_examples, args.prompts, args.batch, context, args.decode_tokens),
                  past="other examples") for context in args.contexts]
    if results["task"] != "associative_recall":  # its length is tied to its vocabulary (distinct keys)
        generated = {context: task_at_length(results, args.prompts, context) for context in args.contexts}

        def at_length(first, count, context):
            ids, answers = generated[context]
            return ids[first:first + count], answers[first:first + count]
        rows += [dict(measure(model, at_length, args.prompts, args.batch, context, 0), past="the task at this length")
                 for context in args.contexts]
    mib = 2 ** 20
    print(f"\n{results['task']} H3 trained at length {params['seq_len']}; {args.prompts} prompts per context, "
          f"{args.decode_tokens} decode steps at batch {args.batch}; {machine()}")
    print("| context | before the prompt | answer accuracy | all logits finite | prefill s per prompt | decode ms "
          "per step | cache MiB (prefill -> decode) | RSS growth while decoding MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        decode = ("—", "—", "—") if "cache_bytes_after_prefill" not in r else (
            f"{r['decode_ms_per_step']:.2f}",
            f"{r['cache_bytes_after_prefill'] / mib:.3f} -> {r['cache_bytes_after_decode'] / mib:.3f}",
            f"{r['rss_growth_while_decoding'] / mib:.1f}")
        print(f"| {r['context']:,} | {r['past']} | {r['accuracy']:.1%} | {'yes' if r['finite'] else 'NO'} | "
              f"{r['prefill_seconds_per_prompt']:.3f} | {decode[0]} | {decode[1]} | {decode[2]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "task": results["task"], "task_params": params,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
