"""Per-token decode latency vs context: H3 (pure and hybrid) vs GPT-2 (KV cache) and Mamba (recurrent cache).

Example:
    python scripts/bench_generation.py                       # d=256, 4 layers, contexts 128..16384, batch 1 and 16
    python scripts/bench_generation.py --contexts 128 1024 --batches 1 --json out.json --plot out.png
    python scripts/bench_generation.py --compile              # adds H3 (pure) with torch.compile'd decode steps
    python scripts/bench_generation.py --mode generate --shape 125m --contexts 128 2048 --batches 1 8

Two modes. ``--mode steps`` (the default, described next) times the model's own decode steps. ``--mode
generate`` times what users call: ``model.generate()`` (greedy) with a logits processor that stamps the clock
at every step, so the prefill (call to first stamp) and each decode step (between stamps) are timed from inside
the generation loop; the median step, the first step and the prefill of the best of ``--rounds`` calls are
reported, with prefill tokens/s, the cache's bytes after the call and the bytes of the weights derived for decoding
that the cache holds (H3's fused q/k/v weight and transposed LM head, its SSM step parameters; derived in the first
step). ``--shape 125m`` builds the released sizes:
H3-125M (width 768, 12 layers, attention at layer 6), a pure-SSM H3 of the same shape, GPT-2 124M and Mamba 130M (24
blocks), all with the GPT-2 vocabulary (50,257); ``--shape toy`` is width 256, 4 layers, vocabulary 1,024. Mamba runs
transformers' PyTorch path (no CUDA kernels on CPU); its prompt is scanned by mambapy's parallel scan when mambapy
is installed (``MambaConfig.use_mambapy``), else by a Python loop over positions.

All models have the same width and vocabulary and about the same parameter count (H3 and GPT-2: the same depth;
Mamba: twice the blocks, since a Mamba block has no MLP) and run in one process on the same threads. For each
context C a prompt of C random tokens is prefilled once at batch 1 (a real forward pass with each model's own
cache), the cache is repeated along the batch to each ``--batches`` size, then ``--steps`` single-token decode
steps (``model(next_token, cache)``, greedy) are timed and the median reported. Also reported: tokens/s
(batch / latency) and the bytes held by the cache after the prefill. GPT-2 runs twice: with transformers'
default DynamicCache (which concatenates the whole K/V at every step, part of its cost) and with a preallocated
StaticCache (written in place; attention spans all its slots, masked). Ratios printed: latency(C) /
latency(smallest C) per model (O(1) decoding stays near 1), GPT-2 / H3 and Mamba / H3 at the same context.
"""

import copy
import inspect
import json
import statistics
import time

import bench_common
import torch
from script_utils import ScriptArgumentParser
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessor,
    LogitsProcessorList,
    MambaConfig,
    MambaForCausalLM,
)
from transformers.cache_utils import StaticCache
from transformers.utils import logging as hf_logging
from transformers.utils.import_utils import is_mambapy_available

from h3_hf import H3Config, H3ForCausalLM

H3_PURE, H3_HYBRID, H3_COMPILED, GPT2, GPT2_STATIC, MAMBA = (
    "H3 (pure)", "H3 (hybrid, 1 attn)", "H3 (pure, compiled)", "GPT-2 (KV cache)", "GPT-2 (static cache)",
    "Mamba (recurrent)")


SHAPES = {  # width, layers (Mamba: twice as many blocks), attention heads, vocabulary
    "toy": dict(hidden_size=256, layers=4, heads=4, vocab=1024),
    "125m": dict(hidden_size=768, layers=12, heads=12, vocab=50257),
}


def build_models(d: int, layers: int, heads: int, vocab: int, max_context: int, compile_h3: bool) -> dict:
    common = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                  embedding_dropout=0.0, pad_vocab_size_multiple=1)
    models = {
        H3_PURE: H3ForCausalLM(H3Config(**common)),
        H3_HYBRID: H3ForCausalLM(H3Config(attn_layer_idx=[layers // 2], **common)),
        GPT2: GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads,
                                         n_positions=max_context + 64, attn_implementation="sdpa")),
        # a Mamba block has no MLP: twice the blocks give the same parameter count (as in the Mamba paper)
        # without its CUDA kernels Mamba prefills with a Python loop over positions; mambapy scans in parallel
        MAMBA: MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=2 * layers,
                                            use_mambapy=is_mambapy_available())),
    }
    models[GPT2_STATIC] = models[GPT2]  # same weights; prefilled into a preallocated StaticCache
    if compile_h3:
        models[H3_COMPILED] = copy.deepcopy(models[H3_PURE])
    return {name: m.eval() for name, m in models.items()}


def cache_tensors(cache):
    """Every tensor a transformers cache holds (KV layers: keys/values; linear-attention layers: states)."""
    for layer in cache.layers:
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            yield from (t for t in items if isinstance(t, torch.Tensor))


def repeat_batch(cache, repeats: int):
    """A copy of a batch-1 cache repeated ``repeats`` times along the batch dimension."""
    cache = copy.deepcopy(cache)
    for layer in cache.layers:
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                setattr(layer, name, value.repeat_interleave(repeats, dim=0))
            elif isinstance(value, dict):
                for key, t in value.items():
                    if isinstance(t, torch.Tensor) and t.dim() > 0:
                        value[key] = t.repeat_interleave(repeats, dim=0)
    return cache


def cache_kwarg(model) -> str:
    """Name of the cache argument and output field: ``cache`` from transformers 5.24 on (the old names are
    deprecated aliases there), ``cache_params`` (Mamba) or ``past_key_values`` before."""
    if "cache" in inspect.signature(model.forward).parameters:
        return "cache"
    return "cache_params" if isinstance(model, MambaForCausalLM) else "past_key_values"


@torch.no_grad()
def prefill(model, context: int, vocab: int, static_length: int | None = None):
    """Batch-1 prefill of ``context`` random tokens; a StaticCache of ``static_length`` slots if given."""
    ids = torch.randint(0, vocab, (1, context))
    cache = {} if static_length is None else {cache_kwarg(model): StaticCache(config=model.config,
                                                                          max_cache_len=static_length)}
    out = model(input_ids=ids, use_cache=True, **cache)
    return getattr(out, cache_kwarg(model)), out.logits[:, -1:].argmax(-1)


class Decoder:
    """One model decoding from one cache; ``run(n)`` returns the seconds of each of n greedy steps."""

    def __init__(self, step_fn, model, cache, token: torch.Tensor):
        self.step_fn, self.kwarg, self.cache, self.token = step_fn, cache_kwarg(model), cache, token

    @torch.no_grad()
    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            out = self.step_fn(input_ids=self.token, use_cache=True, **{self.kwarg: self.cache})
            self.token = out.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - start)
            self.cache = getattr(out, self.kwarg)
        return times


class StepClock(LogitsProcessor):
    """Stamps ``time.perf_counter()`` each time ``generate()`` scores a step (leaves the scores unchanged)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


@torch.no_grad()
def time_generate(model, prompt: torch.Tensor, new_tokens: int) -> dict:
    """One greedy ``generate()`` of ``new_tokens`` after ``prompt`` (batch, C): prefill seconds (call to first
    stamp: the prompt's forward pass and generate()'s setup), the median decode step, the first one (H3 derives what
    its steps read there) and the cache's bytes."""
    clock = StepClock()
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         logits_processor=LogitsProcessorList([clock]))
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or getattr(out, "cache_params", None)
    cache_bytes = sum(t.numel() * t.element_size() for t in cache_tensors(cache)) if cache is not None else 0
    return {"prefill_seconds": clock.stamps[0] - start, "seconds_per_token": statistics.median(steps),
            "first_step_seconds": steps[0],
            "cache_bytes": cache_bytes, "derived_bytes": derived_bytes(model, cache)}


def derived_bytes(model, cache) -> int:
    """Bytes of what decode steps derive from the weights and keep with the cache for the generation (H3: the
    transposed projections and LM head, the SSMs' step parameters), not counting the model's own parameters."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    values = [v for _key, params in getattr(cache, "step_parameters", {}).values() for v in params.values()]
    tensors = {}
    while values:  # tensors, and tensors in tuples (a sliced weight and its bias)
        value = values.pop()
        if isinstance(value, tuple):
            values.extend(value)
        elif isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in own:
            tensors[value.untyped_storage().data_ptr()] = value
    return sum(t.untyped_storage().nbytes() for t in tensors.values())


def run_generate_mode(models: dict, args) -> dict:
    """``--mode generate``: every (batch, context, model) in rounds; best prefill and best median step."""
    results = {name: {str(b): {} for b in args.batches} for name in models}
    runs = [(batch, context, name) for batch in args.batches for context in args.contexts for name in models]
    prompts = {(batch, context): torch.randint(0, args.vocab, (batch, context)) for batch, context, _ in runs}
    for model in models.values():  # warm-up: first calls allocate and pick kernels
        time_generate(model, prompts[args.batches[0], args.contexts[0]], 3)
    for _ in range(args.rounds):
        for batch, context, name in runs:
            sample = time_generate(models[name], prompts[batch, context], args.steps + 1)
            best = results[name][str(batch)].setdefault(str(context), sample)
            for key in ("prefill_seconds", "seconds_per_token", "first_step_seconds"):
                best[key] = min(best[key], sample[key])
    for name in models:
        for batch in map(str, args.batches):
            for context, r in results[name][batch].items():
                r["prefill_tokens_per_second"] = int(batch) * int(context) / r["prefill_seconds"]
                r["tokens_per_second"] = int(batch) / r["seconds_per_token"]
    return results


def print_generate_tables(results: dict, args, machine: str):
    names = list(results)
    reference = H3_PURE if H3_PURE in names else names[0]
    base = str(min(args.contexts))
    for batch in map(str, args.batches):
        for title, key, unit in [("generate(): decode step (ms)", "seconds_per_token", 1e3),
                                 ("generate(): first decode step, deriving what the steps read (ms)",
                                  "first_step_seconds", 1e3),
                                 ("generate(): prefill (tokens/s)", "prefill_tokens_per_second", 1),
                                 ("generate(): cache after the call (MiB)", "cache_bytes", 2**-20),
                                 ("generate(): weights derived for decoding, held with the cache (MiB)",
                                  "derived_bytes", 2**-20)]:
            print(f"\n{title}, batch {batch}, shape {args.shape}, {machine}")
            ratios = [n for n in names if n != reference]
            print("| context | " + " | ".join(names) + "".join(f" | {n} / {reference}" for n in ratios) + " |")
            print("|" + "---|" * (1 + len(names) + len(ratios)))
            for context in map(str, args.contexts):
                r = {n: results[n][batch][context][key] for n in names}
                cells = []
                for n in names:
                    cell = f"{unit * r[n]:.2f}" if key != "prefill_tokens_per_second" else f"{r[n]:.0f}"
                    if key == "seconds_per_token":
                        cell += f" ({r[n] / results[n][batch][base][key]:.2f}x)"
                    cells.append(cell)
                print(f"| {context} | " + " | ".join(cells) + "".join(f" | {r[n] / r[reference]:.2f}" for n in ratios)
                      + " |")
        print(f"(decode: in parentheses latency / latency at context {base}; ratios > 1: that model takes longer, "
              "or for prefill tokens/s, processes more per second)")


def plot(results: dict, batches: list[int], path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name, per_batch in results.items():
            points = sorted((int(c), 1e3 * r["seconds_per_token"]) for c, r in per_batch[str(batch)].items())
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set(xlabel="context (tokens)", ylabel="ms per decode step", title=f"batch {batch}")
    bench_common.finish_figure(fig, list(axes[0]), path, title)


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--mode", choices=["steps", "generate"], default="steps",
                        help="time the models' decode steps, or generate() from inside its loop")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="preset width/layers/heads/vocab (overrides those four options)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these models (names as in the tables; default: all)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048, 8192, 16384],
                        help="context lengths C (prompt tokens prefilled before the timed steps)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes of the decode steps")
    parser.add_argument("--hidden-size", type=int, default=256, help="model width")
    parser.add_argument("--layers", type=int, default=4, help="H3 and GPT-2 layers (Mamba: twice as many)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model, context and round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds over all (context, model) pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="also time H3 (pure) with torch.compile'd steps")
    parser.add_argument("--json", default="bench_generation.json", help="where the timings are written")
    parser.add_argument("--plot", default="bench_generation.png", help="where the figure is written")
    args = parser.parse_args(argv)
    if args.shape:
        shape = SHAPES[args.shape]
        args.hidden_size, args.layers, args.heads, args.vocab = (shape[k] for k in ("hidden_size", "layers", "heads",
                                                                                    "vocab"))
    all_names = [H3_PURE, H3_HYBRID, GPT2, GPT2_STATIC, MAMBA] + ([H3_COMPILED] if args.compile else [])
    unknown = sorted(set(args.models or []) - set(all_names))
    if unknown:
        parser.error(f"argument --models: unknown {unknown}; choose from {all_names}")
    if min(args.contexts) < 1 or min(args.batches) < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--contexts, --batches, --steps and --rounds must be >= 1")
    hf_logging.set_verbosity_error()  # Mamba's "falling back to the PyTorch implementation" notices
    torch.manual_seed(0)
    models = build_models(args.hidden_size, args.layers, args.heads, args.vocab, max(args.contexts) + args.steps + 8,
                          args.compile)
    if args.mode == "generate":
        models.pop(GPT2_STATIC)  # generate() builds its own cache
        models.pop(H3_COMPILED, None)
    if args.models:
        models = {name: m for name, m in models.items() if name in args.models}
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    machine = bench_common.machine()
    if args.mode == "generate":
        results = run_generate_mode(models, args)
        print_generate_tables(results, args, machine)
        print("\nParameters: " + ", ".join(f"{n} {sizes[n] / 1e6:.2f}M" for n in models))
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "parameters": sizes, "results": results}, f, indent=2)
        return
    step_fns = {name: m.forward for name, m in models.items()}
    if H3_COMPILED in models:
        step_fns[H3_COMPILED] = torch.compile(models[H3_COMPILED].forward)
    results = {name: {str(b): {} for b in args.batches} for name in models}
    prefills = {}
    for context in args.contexts:
        for name, model in models.items():
            start = time.perf_counter()
            static = context + args.warmup + args.rounds * args.steps + 1 if name == GPT2_STATIC else None
            prefills[name, context] = (*prefill(model, context, args.vocab, static), time.perf_counter() - start)
    for batch in args.batches:
        decoders, samples, cache_bytes = {}, {}, {}
        for (name, context), (cache, token, _) in prefills.items():
            batch_cache = repeat_batch(cache, batch)
            cache_bytes[name, context] = sum(t.numel() * t.element_size() for t in cache_tensors(batch_cache))
            decoders[name, context] = Decoder(step_fns[name], models[name], batch_cache, token.repeat(batch, 1))
            decoders[name, context].run(args.warmup)  # first steps (and compilation) not timed
            samples[name, context] = []
        # rounds visit every (context, model) in turn, so slow phases of a shared machine hit all of them alike
        for _ in range(args.rounds):
            for key, decoder in decoders.items():
                samples[key] += decoder.run(args.steps)
        for name, context in decoders:
            seconds = statistics.median(samples[name, context])
            results[name][str(batch)][str(context)] = {
                "seconds_per_token": seconds, "tokens_per_second": batch / seconds,
                "cache_bytes": cache_bytes[name, context],
                "prefill_seconds_batch1": prefills[name, context][2], "samples": len(samples[name, context])}
            print(f"{name:22s} context {context:6d} batch {batch:3d}: {1e3 * seconds:8.2f} ms/step, "
                  f"cache {cache_bytes[name, context] / 2**20:8.2f} MiB", flush=True)
        del decoders

    base = str(min(args.contexts))
    for batch in map(str, args.batches):
        print(f"\nDecode latency per token (ms), batch {batch}, d={args.hidden_size}, {args.layers} layers, {machine}")
        reference = H3_PURE if H3_PURE in models else next(iter(models))
        ratio_names = [n for n in (GPT2, GPT2_STATIC, MAMBA) if n in models and n != reference]
        print("| context | " + " | ".join(models) + "".join(f" | {n} / {reference}" for n in ratio_names) + " |")
        print("|" + "---|" * (len(models) + len(ratio_names) + 1))
        for context in map(str, args.contexts):
            r = {name: results[name][batch][context]["seconds_per_token"] for name in models}
            cells = [f"{1e3 * r[n]:.2f} ({r[n] / results[n][batch][base]['seconds_per_token']:.2f}x)" for n in models]
            ratios = "".join(f" | {r[n] / r[reference]:.2f}" for n in ratio_names) + " |"
            print(f"| {context} | " + " | ".join(cells) + ratios)
        print(f"(in parentheses: latency / latency at context {base})")
        print(f"\nCache memory (MiB), batch {batch}")
        print("| context | " + " | ".join(models) + " |")
        print("|" + "---|" * (len(models) + 1))
        for context in map(str, args.contexts):
            cells = [f"{results[n][batch][context]['cache_bytes'] / 2**20:.2f}" for n in models]
            print(f"| {context} | " + " | ".join(cells) + " |")
    print("\nParameters: " + ", ".join(f"{n} {sizes[n] / 1e6:.2f}M" for n in models))
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "machine": machine, "parameters": sizes, "results": results}, f, indent=2)
    if args.plot:
        plot(results, args.batches, args.plot, f"decode latency, d={args.hidden_size}, {args.layers} layers, {machine}")


if __name__ == "__main__":
    main()
