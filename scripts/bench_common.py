"""Helpers shared by the bench_*.py scripts."""

import json
import os
import platform

import torch


def machine() -> str:
    """torch version, intra-op threads and CPU, as printed under every benchmark table."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"


def finish_figure(fig, axes, path: str, title: str):
    """Log-log grids, a legend on the first axes, the machine in the title; saved as a PNG at ``path``."""
    for ax in axes:
        ax.set(xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def trained_synthetic_run(model_dir: str):
    """(results.json, DatasetDict) of a ``scripts/train_synthetic.py`` run: its task's splits regenerated exactly."""
    from h3_hf.data.synthetics import load_synthetic

    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    params, args = results["task_params"], results["args"]
    sizes = {k: args[k] for k in ("num_train", "num_validation", "num_test")}
    task = {k: params[k] for k in ("vocab_size", "seq_len", "num_kv_pairs", "power_a") if k in params}
    return results, load_synthetic(results["task"], seed=params["seed"], **sizes, **task)
