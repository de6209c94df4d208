"""Count the ATen operator calls of one greedy generate() of H3 (and GPT-2 for comparison), split into the prefill
(the prompt's forward pass) and the decode steps, with torch.profiler.

Example:
    python scripts/count_generate_ops.py                          # H3-125M shape (pure SSM), 128-token prompt
    python scripts/count_generate_ops.py --shape toy --prompt 512 --new_tokens 9

Operator counts are what Python-level loops and per-channel fallbacks inside kernels show up as (thousands of
``aten::select`` / ``copy_`` calls per forward); they do not depend on the machine's load, unlike timings.
"""

import collections

import torch
from bench_generation import SHAPES
from script_utils import ScriptArgumentParser
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel

from h3_hf import H3Config, H3ForCausalLM


def build(kind: str, shape: dict, max_length: int):
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=shape["vocab"], n_embd=shape["hidden_size"],
                                          n_layer=shape["layers"], n_head=shape["heads"], n_positions=max_length,
                                          attn_implementation="sdpa"))
    attention = [shape["layers"] // 2] if kind == "h3_hybrid" else []
    return H3ForCausalLM(H3Config(vocab_size=shape["vocab"], hidden_size=shape["hidden_size"],
                                  num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                                  attn_layer_idx=attention, embedding_dropout=0.0, pad_vocab_size_multiple=1))


@torch.no_grad()
def count_ops(model, prompt: torch.Tensor, new_tokens: int) -> collections.Counter:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return collections.Counter(event.name for event in prof.events() if event.name.startswith("aten::"))


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="125m", help="model shape (bench_generation's)")
    parser.add_argument("--models", nargs="+", choices=["h3", "h3_hybrid", "gpt2"], default=["h3", "gpt2"],
                        help="models to count")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=10,
                        help="generated tokens (the first comes from the prefill; >= 3)")
    parser.add_argument("--top", type=int, default=6, help="most frequent operators listed")
    args = parser.parse_args(argv)
    if args.prompt < 1 or args.new_tokens < 3:
        parser.error("--prompt must be >= 1 and --new_tokens >= 3")
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    prompt = torch.randint(0, shape["vocab"], (1, args.prompt))
    print(f"| model | ops, prefill + 1 token | first decode step | per further step | most frequent (whole call, "
          f"{args.new_tokens} tokens) |")
    print("|---|---|---|---|---|")
    for kind in args.models:
        model = build(kind, shape, args.prompt + args.new_tokens + 8).eval()
        count_ops(model, prompt, 2)  # warm-up
        prefill = sum(count_ops(model, prompt, 1).values())  # generate() makes >= 1 token: the prefill's
        two = sum(count_ops(model, prompt, 2).values())  # + the first decode step (H3 derives its step parameters)
        whole = count_ops(model, prompt, args.new_tokens)
        per_step = (sum(whole.values()) - two) / (args.new_tokens - 2)
        top = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in whole.most_common(args.top))
        print(f"| {kind} | {prefill} | {two - prefill} | {per_step:.0f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
