"""Training-step cost vs sequence length: H3, S4D, S5 and GPT-2 (sdpa attention) of equal size.

Example:
    python scripts/bench_training.py                                  # d=256, 4 layers, L = 1k..16k, batch 1
    python scripts/bench_training.py --lengths 1024 4096 --models h3 gpt2 --json out.json --plot out.png
    python scripts/bench_training.py --compile                        # adds H3 with torch.compile

No model uses dropout (GPT-2's attention dropout would force sdpa's quadratic-memory math path on CPU).
H3 and GPT-2 share width and depth (about the same parameter count); S4D and S5 have the same depth and the
multiple-of-64 width whose parameter count is closest to H3's (``--no-match-parameters``: same width). One
forward + backward pass (loss on every position for the LMs, on the pooled output for the classifiers,
gradients zeroed between steps) is timed per model and length: one warm-up step, then the median of
``--steps``. Each (model, length) runs in its own process; its peak memory is the growth of the resident set
during one step (``VmHWM`` after the peak counter is reset, minus ``VmRSS`` before), measured in a second process
where glibc's mmap threshold is pinned so that freed tensors leave the resident set (that costs page faults,
so the timing process keeps the default allocator); weights and interpreter are not counted.
Printed: ms per step, peak MiB, MiB per 1k tokens (flat = linear memory), the
ratio GPT-2 / H3, and the crossover length from which H3 is faster than GPT-2.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import bench_common
from script_utils import ScriptArgumentParser

MODELS = ("h3", "h3_compiled", "s4d", "s5", "gpt2")
LABELS = {"h3": "H3", "h3_compiled": "H3 (compiled)", "s4d": "S4D", "s5": "S5", "gpt2": "GPT-2 (sdpa)"}


def build(model: str, d: int, layers: int, heads: int, vocab: int, max_length: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    import h3_hf

    if model in ("h3", "h3_compiled"):
        return h3_hf.H3ForCausalLM(h3_hf.H3Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                                      num_attention_heads=heads, pad_vocab_size_multiple=1, embedding_dropout=0.0))
    if model == "s4d":
        config = h3_hf.S4DConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_labels=10, dropout=0.0)
        return h3_hf.S4DForSequenceClassification(config)
    if model == "s5":
        config = h3_hf.S5Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_labels=10, dropout=0.0)
        return h3_hf.S5ForSequenceClassification(config)
    # no dropout anywhere: attention dropout would push sdpa off its fused CPU kernel onto the L x L math path
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_positions=max_length,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa"))


def parameter_count(model: str, d: int, args) -> int:
    return sum(p.numel() for p in build(model, d, args.layers, args.heads, args.vocab, 64).parameters())


def matched_width(model: str, target: int, args) -> int:
    """The multiple-of-64 width (64..4096) whose parameter count is closest to ``target``."""
    best, d = None, 64
    while d <= 4096:
        gap = abs(parameter_count(model, d, args) - target)
        if best is not None and gap > best[0]:
            break  # counts grow with d: past the closest one
        best = (gap, d)
        d += 64
    return best[1]


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(args) -> dict:
    """Time ``args.steps`` forward+backward steps of one model at one length; runs in its own process."""
    import torch

    torch.manual_seed(0)
    model = build(args.child, args.hidden_size, args.layers, args.heads, args.vocab, args.length).train()
    ids = torch.randint(0, args.vocab, (args.batch, args.length))
    labels = ids if args.child in ("h3", "h3_compiled", "gpt2") else torch.randint(0, 10, (args.batch,))
    forward = torch.compile(model) if args.child == "h3_compiled" else model

    def step():
        loss = forward(input_ids=ids, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # warm-up (and compilation)
    warmup = time.perf_counter() - start
    rss_before = proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times), "warmup_seconds": warmup,
            "peak_bytes": 1024 * max(proc_status_kib("VmHWM") - rss_before, 0),
            "parameters": sum(p.numel() for p in model.parameters())}


def run_child(model: str, length: int, args) -> dict | None:
    """Two processes: one times the steps with the default allocator; one, with glibc's mmap threshold pinned
    (freed tensors leave the resident set, but every large allocation costs page faults), measures the peak."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, "--length", str(length),
           "--hidden-size", str(args.widths[model]), "--layers", str(args.layers), "--heads", str(args.heads),
           "--vocab", str(args.vocab), "--batch", str(args.batch)]
    pinned = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    try:
        timing = subprocess.run(cmd + ["--steps", str(args.steps)], capture_output=True, text=True,
                                timeout=args.timeout, check=True)
        memory = subprocess.run(cmd + ["--steps", "1"], capture_output=True, text=True, timeout=args.timeout,
                                check=True, env=pinned)
    except subprocess.TimeoutExpired:
        print(f"{LABELS[model]} L={length}: over {args.timeout} s, skipped", flush=True)
        return None
    except subprocess.CalledProcessError as err:
        print(f"{LABELS[model]} L={length} failed (exit {err.returncode}):\n{err.stderr[-2000:]}", flush=True)
        return None
    result = json.loads(timing.stdout.strip().splitlines()[-1])
    result["peak_bytes"] = json.loads(memory.stdout.strip().splitlines()[-1])["peak_bytes"]
    return result


def crossover(lengths: list[int], h3: dict, gpt2: dict) -> str:
    """From which length H3's step is faster than GPT-2's, log-interpolated between measured lengths."""
    import math

    points = [(L, gpt2[L]["seconds_per_step"] / h3[L]["seconds_per_step"]) for L in lengths if L in h3 and L in gpt2]
    if not points:
        return "not measured"
    if all(r >= 1 for _, r in points):
        return f"H3 is faster at every measured length (from L = {points[0][0]})"
    for (l0, r0), (l1, r1) in zip(points, points[1:]):  # the last crossing from slower to faster
        if r0 < 1 <= r1 and all(r >= 1 for L, r in points if L > l1):
            t = -math.log(r0) / (math.log(r1) - math.log(r0))
            return f"L ~ {math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))):.0f}"
    return f"none up to L = {points[-1][0]}"


def plot(results: dict, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for model, per_length in results.items():
        lengths = sorted(per_length)
        ax_t.plot(lengths, [1e3 * per_length[L]["seconds_per_step"] for L in lengths], marker="o", label=LABELS[model])
        ax_m.plot(lengths, [per_length[L]["peak_bytes"] / 2**20 for L in lengths], marker="o", label=LABELS[model])
    ax_t.set(xlabel="sequence length", ylabel="ms per forward+backward", title="step time")
    ax_m.set(xlabel="sequence length", ylabel="peak MiB", title="peak memory")
    bench_common.finish_figure(fig, [ax_t, ax_m], path, title)


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        help="sequence lengths L")
    parser.add_argument("--models", nargs="+", default=["h3", "s4d", "s5", "gpt2"], choices=MODELS, metavar="MODEL",
                        help=f"models to time, one or more of {', '.join(MODELS)} (default: h3 s4d s5 gpt2)")
    parser.add_argument("--compile", action="store_true", help="also time H3 under torch.compile")
    parser.add_argument("--hidden-size", type=int, default=256, help="width of H3 and GPT-2")
    parser.add_argument("--no-match-parameters", dest="match_parameters", action="store_false",
                        help="give S4D and S5 the same width instead of H3's parameter count")
    parser.add_argument("--layers", type=int, default=4, help="layers of every model")
    parser.add_argument("--heads", type=int, default=4, help="GPT-2 attention heads")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary of the LMs")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up (median reported)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (model, length) process")
    parser.add_argument("--json", default="bench_training.json", help="where the timings are written")
    parser.add_argument("--plot", default="bench_training.png", help="where the figure is written")
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    models = list(dict.fromkeys(args.models + (["h3_compiled"] if args.compile else [])))
    args.widths = {m: args.hidden_size for m in models}
    if args.match_parameters:
        target = parameter_count("h3", args.hidden_size, args)
        args.widths.update({m: matched_width(m, target, args) for m in models if m in ("s4d", "s5")})
    results = {m: {} for m in models}
    for length in args.lengths:
        for model in models:
            r = run_child(model, length, args)
            if r is not None:
                results[model][length] = r
                print(f"{LABELS[model]:14s} L={length:6d}: {1e3 * r['seconds_per_step']:9.1f} ms/step, "
                      f"peak {r['peak_bytes'] / 2**20:8.1f} MiB", flush=True)

    machine = bench_common.machine()
    print(f"\nForward+backward per step, batch {args.batch}, {args.layers} layers, widths "
          + ", ".join(f"{LABELS[m]} {w}" for m, w in args.widths.items()) + f", {machine}")
    print("| L | " + " | ".join(f"{LABELS[m]} ms (MiB, MiB/1k tok)" for m in models) + " | GPT-2 / H3 |")
    print("|" + "---|" * (len(models) + 2))
    for length in args.lengths:
        cells = []
        for m in models:
            r = results[m].get(length)
            cells.append("—" if r is None else f"{1e3 * r['seconds_per_step']:.0f} ({r['peak_bytes'] / 2**20:.0f}, "
                                              f"{r['peak_bytes'] / 2**20 / (length / 1024):.1f})")
        h3, gpt2 = results.get("h3", {}).get(length), results.get("gpt2", {}).get(length)
        ratio = f"{gpt2['seconds_per_step'] / h3['seconds_per_step']:.2f}" if h3 and gpt2 else "—"
        print(f"| {length} | " + " | ".join(cells) + f" | {ratio} |")
    cross = crossover(args.lengths, results.get("h3", {}), results.get("gpt2", {}))
    print(f"\nCrossover (H3 faster than GPT-2 from): {cross}")
    params = {m: next(iter(results[m].values()))["parameters"] for m in models if results[m]}
    print("Parameters: " + ", ".join(f"{LABELS[m]} {p / 1e6:.2f}M (width {args.widths[m]})" for m, p in params.items()))
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "machine": machine, "crossover": cross, "parameters": params,
                   "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()}}, f, indent=2)
    if args.plot:
        plot(results, args.plot, f"batch {args.batch}, d={args.hidden_size}, {args.layers} layers, {machine}")


if __name__ == "__main__":
    main()
