"""Compare pure H3, hybrid H3, GPT-2 and Mamba language models of equal size on the same text and tokens.

Example:
    python scripts/compare_lms.py --output_dir runs/compare                     # the defaults below, 3 seeds
    python scripts/compare_lms.py --models h3 gpt2 --seeds 1 --max_steps 50 --output_dir runs/quick

Every model gets the same tokenizer (byte-level BPE trained once on the training text), the same blocks, batch,
number of steps (so the same training tokens), learning rate and schedule, and a width chosen so that its parameter
count is within 10% of --target_parameters (printed; the run stops if one cannot be matched). "h3-hybrid" has
attention at about 1/3 and 2/3 of its depth, as the released H3 models. Each (model, seed) is one run of
scripts/train_lm.py in OUTPUT_DIR/<model>-seed<seed>; a run finished there with the same flags is reused (an
interrupted comparison resumes). Afterwards every model is evaluated on the validation text cut
into blocks of 1x, 4x and 16x the training block size (--eval_multiples). Writes OUTPUT_DIR/comparison.json,
OUTPUT_DIR/comparison.md (validation perplexity, mean ± std over the seeds) and OUTPUT_DIR/comparison.png
(validation loss against training tokens and against wall time; perplexity against evaluation length).
"""

import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from transformers.utils.import_utils import is_mambapy_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_lm  # noqa: E402
from script_utils import ScriptArgumentParser, add_threads_argument  # noqa: E402

MODELS = ("h3", "h3-hybrid", "gpt2", "mamba")
RUN_RECORD = "compare_args.json"  # the train_lm.py flags a run was made with


def default_models() -> list[str]:
    """All four where Mamba trains at a usable speed (a GPU, or mambapy's parallel scan), else without Mamba."""
    fast_mamba = torch.cuda.is_available() or is_mambapy_available()
    return list(MODELS) if fast_mamba else [m for m in MODELS if m != "mamba"]


def parse_args(argv):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=default_models(), help="(default: all four "
                        "on a GPU or with the mambapy package installed; else h3, h3-hybrid and gpt2: without either, "
                        "transformers' Mamba trains with a Python loop over positions)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="(default: 1 2 3)")
    parser.add_argument("--dataset_name", default="stdlib-docstrings", help="a saved datasets folder or 'stdlib' / "
                        "'stdlib-docstrings' (default: stdlib-docstrings, the docstrings of this interpreter's "
                        "standard library)")
    parser.add_argument("--target_parameters", type=float, default=1.2e6, help="(default: 1.2e6)")
    parser.add_argument("--num_hidden_layers", type=int, default=4, help="layers of H3 and GPT-2; Mamba, whose "
                        "blocks have no MLP, gets twice as many (default: 4)")
    parser.add_argument("--block_size", type=int, default=128, help="(default: 128)")
    parser.add_argument("--tokenizer_vocab_size", type=int, default=2048, help="(default: 2048)")
    parser.add_argument("--max_steps", type=int, default=300, help="(default: 300)")
    parser.add_argument("--batch_size", type=int, default=16, help="(default: 16)")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="(default: 2e-3)")
    parser.add_argument("--eval_multiples", nargs="+", type=int, default=[1, 4, 16], help="(default: 1 4 16)")
    parser.add_argument("--eval_batch_tokens", type=int, default=8192, help="tokens per evaluation batch "
                        "(default: 8192)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    for name in ("target_parameters", "num_hidden_layers", "block_size", "max_steps", "batch_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    return args


def model_flags(model: str, layers: int) -> list[str]:
    """train_lm.py flags of one compared model (without its width)."""
    if model == "h3-hybrid":
        attn = sorted({layers // 3, 2 * layers // 3})  # 24 layers: 8 and 16, as the released H3-1.3B
        return ["--model_type", "h3", "--num_hidden_layers", str(layers), "--attn_layer_idx", *map(str, attn)]
    if model == "mamba":
        return ["--model_type", "mamba", "--num_hidden_layers", str(2 * layers)]
    return ["--model_type", model, "--num_hidden_layers", str(layers)]


def parameter_count(model: str, hidden_size: int, layers: int, tokenizer, block_size: int) -> int:
    """Parameters of ``model`` at ``hidden_size`` (built on the meta device, nothing allocated)."""
    parser = HfArgumentParser(train_lm.ModelArguments)
    (args,) = parser.parse_args_into_dataclasses(args=[*model_flags(model, layers), "--hidden_size", str(hidden_size)])
    with torch.device("meta"):
        return sum(p.numel() for p in train_lm.build_model(args, tokenizer, block_size).parameters())


def matching_width(model: str, target: float, layers: int, tokenizer, block_size: int) -> tuple[int, int]:
    """The width (a multiple of 4) whose parameter count is closest to ``target``; exits if not within 10%."""
    width, count = 8, 0
    for candidate in range(8, 2049, 4):  # parameters grow with the width: stop once past the target
        candidate_count = parameter_count(model, candidate, layers, tokenizer, block_size)
        if abs(candidate_count - target) < abs(count - target):
            width, count = candidate, candidate_count
        if candidate_count > target:
            break
    if abs(count - target) > 0.1 * target:
        sys.exit(f"compare_lms.py: error: no width gives {model} {target:,.0f} parameters within 10% "
                 f"(closest: width {width}, {count:,})")
    return width, count


def save_if_changed(tokenizer, folder: Path) -> None:
    """Save ``tokenizer`` in ``folder`` unless the same files are there already (a comparison run by several
    processes: the tokenizer, trained alike by each, is then not rewritten while another process reads it)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        saved = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
    if folder.is_dir() and all((folder / name).is_file() and (folder / name).read_bytes() == data
                               for name, data in saved.items()):
        return
    tokenizer.save_pretrained(folder)


def run_settings(flags: list[str]) -> list[str]:
    """train_lm.py flags without the folders (the comparison's own, so that a moved comparison is reused)."""
    folders = {"--output_dir", "--tokenizer_name"}
    return [flag for i, flag in enumerate(flags) if flag not in folders and (i == 0 or flags[i - 1] not in folders)]


def finished_run(run_dir: Path, flags: list[str]) -> dict | None:
    """The results of a run already trained in ``run_dir`` with the same train_lm.py settings (so that an
    interrupted comparison resumes), else None (the run is trained, again if it was made with other settings)."""
    record, results = run_dir / RUN_RECORD, run_dir / "results.json"
    if record.exists() and results.exists() and run_settings(json.loads(record.read_text())) == run_settings(flags):
        return json.loads(results.read_text())
    return None


def perplexity_at_length(run_dir: Path, texts: list[str], length: int, batch_tokens: int) -> float:
    """Validation perplexity of the model in ``run_dir`` on the texts (each followed by end-of-text) cut into blocks
    of ``length`` tokens."""
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    stream = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"] +
              [tokenizer.eos_token_id]]
    blocks = torch.tensor(stream[:len(stream) // length * length]).view(-1, length)
    if len(blocks) == 0:
        return float("nan")
    return math.exp(train_lm.causal_lm_loss(model, blocks, max(1, batch_tokens // length)))


def mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f} (1 seed)"


def plot(summary: dict, path: Path, eval_lengths: list[int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (model, runs) in enumerate(summary.items()):
        color = f"C{i}"
        for j, run in enumerate(runs):
            evals = [h for h in run["log_history"] if "eval_loss" in h]
            tokens = [h["step"] * run["tokens_per_step"] for h in evals]
            axes[0].plot(tokens, [h["eval_loss"] for h in evals], color=color, label=model if j == 0 else None)
            axes[1].plot([h.get("elapsed_seconds", float("nan")) for h in evals], [h["eval_loss"] for h in evals],
                         color=color, label=model if j == 0 else None)
        axes[2].plot(eval_lengths, [statistics.mean(r["perplexity_at"][str(n)] for r in runs) for n in eval_lengths],
                     color=color, marker="o", label=model)
    axes[0].set_xlabel("training tokens")
    axes[1].set_xlabel("wall time (s)")
    for ax in axes[:2]:
        ax.set_ylabel("validation loss (nats per token)")
    axes[2].set_xlabel("evaluation block length (tokens)")
    axes[2].set_ylabel("validation perplexity")
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    texts = train_lm.load_texts(train_lm.DataArguments(dataset_name=args.dataset_name))
    tokenizer_dir = args.output_dir / "tokenizer"
    tokenizer = train_lm.train_tokenizer(texts["train"]["text"], args.tokenizer_vocab_size)
    save_if_changed(tokenizer, tokenizer_dir)
    widths = {m: matching_width(m, args.target_parameters, args.num_hidden_layers, tokenizer, args.block_size)
              for m in args.models}
    for model, (width, count) in widths.items():
        print(f"{model}: width {width}, {count:,} parameters", flush=True)
    eval_lengths = [args.block_size * k for k in args.eval_multiples]
    validation_texts = texts["validation"]["text"]
    summary = {}
    for model in args.models:
        for seed in args.seeds:
            run_dir = args.output_dir / f"{model}-seed{seed}"
            flags = ["--dataset_name", args.dataset_name, "--tokenizer_name", str(tokenizer_dir), "--output_dir",
                     str(run_dir), *model_flags(model, args.num_hidden_layers), "--hidden_size",
                     str(widths[model][0]), "--block_size", str(args.block_size), "--max_steps", str(args.max_steps),
                     "--per_device_train_batch_size", str(args.batch_size), "--learning_rate",
                     str(args.learning_rate), "--seed", str(seed), "--eval_steps", str(max(1, args.max_steps // 10))]
            results = finished_run(run_dir, flags)
            if results is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / RUN_RECORD).write_text(json.dumps(flags))
                results = train_lm.main([*flags, *(["--threads", str(args.threads)] if args.threads else [])])
            else:
                print(f"{model} seed {seed}: reusing the finished run in {run_dir}", flush=True)
            results["tokens_per_step"] = args.batch_size * args.block_size
            results["perplexity_at"] = {str(n): perplexity_at_length(run_dir, validation_texts, n,
                                                                     args.eval_batch_tokens) for n in eval_lengths}
            summary.setdefault(model, []).append(results)

    header = " | ".join(f"ppl @ {n}" for n in eval_lengths)
    lines = [f"| model | parameters | training tokens | {header} |", "|---" * (3 + len(eval_lengths)) + "|"]
    for model, runs in summary.items():
        cells = " | ".join(mean_std([r["perplexity_at"][str(n)] for r in runs]) for n in eval_lengths)
        lines.append(f"| {model} | {runs[0]['num_parameters']:,} | {runs[0]['train_tokens']:,} | {cells} |")
    table = "\n".join(lines)
    print("\nValidation perplexity (mean ± std over seeds " + ", ".join(map(str, args.seeds)) + ")\n" + table)
    (args.output_dir / "comparison.md").write_text(table + "\n")
    (args.output_dir / "comparison.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "widths": widths,
         "runs": summary}, indent=2))
    plot(summary, args.output_dir / "comparison.png", eval_lengths)
    return summary


if __name__ == "__main__":
    main()
