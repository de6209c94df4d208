"""Compare this checkout's h3_hf with another checkout's in one process: decode steps and a training step.

    git worktree add /tmp/h3-base HEAD~1          # the revision to compare with
    python scripts/bench_revisions.py --baseline /tmp/h3-base
    python scripts/bench_revisions.py --baseline /tmp/h3-base --contexts 128 8192 --train-length 2048 --json out.json

Both packages are imported side by side (the baseline under another module name) and build the same models: a pure
H3 and a hybrid with attention at layer 1 (d=256, 4 layers, state 64, vocabulary 1,024; the baseline's weights are
copied from this checkout's model). Decode: for each context C, both models prefill the same C random tokens once,
then run ``--steps`` single-token steps ``model(token, cache)`` per round, the two revisions alternating round by
round (``--rounds``), so that load on the machine hits both alike; the median step is reported. Training: forward +
backward of the LM loss at ``--train-length`` tokens, batch 1, alternating likewise. Printed: the baseline's and this
checkout's milliseconds and their ratio (this / baseline; below 1 is faster).
"""

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from script_utils import ScriptArgumentParser  # noqa: E402


def import_package(checkout: Path, name: str):
    """The ``h3_hf`` package of ``checkout`` imported as the module ``name``."""
    init = checkout / "h3_hf" / "__init__.py"
    if not init.exists():
        sys.exit(f"--baseline {checkout}: no h3_hf/__init__.py there (expected a checkout of h3-hf)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build(package, attn_layer_idx: list[int], state: dict | None):
    config = package.H3Config(vocab_size=1024, hidden_size=256, num_hidden_layers=4, state_size=64,
                              num_attention_heads=4, attn_layer_idx=attn_layer_idx, embedding_dropout=0.0)
    model = package.H3ForCausalLM(config).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def returned_cache(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def decode_times(models: dict, context: int, steps: int, rounds: int) -> dict[str, float]:
    """Median ms per single-token step for each model, rounds alternating between the models."""
    prompt = torch.randint(0, 1024, (1, context))
    caches = {name: returned_cache(model(input_ids=prompt, use_cache=True)) for name, model in models.items()}
    token = torch.randint(0, 1024, (1, 1))
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for _ in range(steps):
                start = time.perf_counter()
                model(input_ids=token, cache=caches[name], use_cache=True)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def train_times(models: dict, length: int, rounds: int) -> dict[str, float]:
    """Median ms per forward + backward of the LM loss, rounds alternating between the models."""
    ids = torch.randint(0, 1024, (1, length))
    times = {name: [] for name in models}
    for model in models.values():
        model.train()
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            times[name].append(1000 * (time.perf_counter() - start))
            model.zero_grad(set_to_none=True)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of h3-hf to compare with")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 8192], help="decode contexts (default: "
                        "128 8192)")
    parser.add_argument("--steps", type=int, default=20, help="decode steps per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (default: 8)")
    parser.add_argument("--train-length", type=int, default=2048, help="tokens of the training step (default: "
                        "2048; 0 skips it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    baseline = import_package(args.baseline.resolve(), "h3_hf_baseline")
    current = import_package(REPO, "h3_hf")  # imported second, so its Auto registrations are the ones in force
    torch.manual_seed(0)
    rows = []
    for label, attn in (("H3 (pure)", []), ("H3 (hybrid, 1 attn)", [1])):
        model = build(current, attn, None)
        models = {"baseline": build(baseline, attn, model.state_dict()), "this": model}
        for context in args.contexts:
            ms = decode_times(models, context, args.steps, args.rounds)
            rows.append({"model": label, "what": f"decode step, context {context}", **ms})
            print(f"{label:20s} decode @ {context:6d}: baseline {ms['baseline']:.3f} ms, this {ms['this']:.3f} ms",
                  flush=True)
        if args.train_length:
            ms = train_times(models, args.train_length, max(2, args.rounds // 2))
            rows.append({"model": label, "what": f"training step, length {args.train_length}", **ms})
            print(f"{label:20s} train @ {args.train_length}: baseline {ms['baseline']:.1f} ms, "
                  f"this {ms['this']:.1f} ms",
                  flush=True)

    print(f"\nthis checkout vs {args.baseline} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print("| model | what | baseline (ms) | this (ms) | this / baseline |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['what']} | {row['baseline']:.3f} | {row['this']:.3f} | "
              f"{row['this'] / row['baseline']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline": str(args.baseline), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
