"""Per-token decode latency vs context length: H3 (pure and hybrid) vs GPT-2 with its KV cache.

    python scripts/bench_generation.py                      # d=256, 4 layers, contexts 128..8192
    python scripts/bench_generation.py --contexts 128 1024 --json out.json

For each context C the prompt of C random tokens is prefilled once, then ``--steps`` single-token
decode steps are timed (model forward with the cache, batch ``--batch``); the median step time is
reported. Ratios printed: latency(C) / latency(128) per model (O(1) decoding stays near 1) and
GPT-2 / H3 at the same context. All models run in the same process on the same threads.
"""

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from h3_hf import H3Config, H3ForCausalLM


def build_models(d: int, layers: int, heads: int, vocab: int, max_context: int):
    common = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                  embedding_dropout=0.0, pad_vocab_size_multiple=1)
    models = {
        "H3 (pure)": H3ForCausalLM(H3Config(**common)),
        "H3 (hybrid, 1 attn)": H3ForCausalLM(H3Config(attn_layer_idx=[layers // 2], **common)),
        "GPT-2 (KV cache)": GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads,
                                                       n_positions=max_context + 64, attn_implementation="sdpa")),
    }
    return {name: m.eval() for name, m in models.items()}


@torch.no_grad()
def decode_latency(model, context: int, batch: int, steps: int, vocab: int) -> float:
    """Median seconds per decode step after prefilling ``context`` tokens."""
    ids = torch.randint(0, vocab, (batch, context))
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - start)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    return statistics.median(times[2:] if steps > 4 else times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default="bench_generation.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = build_models(args.hidden_size, args.layers, args.heads, args.vocab, max(args.contexts))
    results = {name: {} for name in models}
    for context in args.contexts:
        for name, model in models.items():
            results[name][context] = decode_latency(model, context, args.batch, args.steps, args.vocab)
    base = args.contexts[0]
    print(f"\nDecode latency per token (ms), batch {args.batch}, d={args.hidden_size}, {args.layers} layers, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = "| context | " + " | ".join(models) + " | GPT-2 / H3 (pure) |"
    print(header)
    print("|" + "---|" * (len(models) + 2))
    for context in args.contexts:
        cells = [f"{1e3 * results[n][context]:.2f} ({results[n][context] / results[n][base]:.2f}x)" for n in models]
        ratio = results["GPT-2 (KV cache)"][context] / results["H3 (pure)"][context]
        print(f"| {context} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print(f"(in parentheses: latency / latency at context {base})")
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "seconds_per_token": results}, f, indent=2)


if __name__ == "__main__":
    main()
