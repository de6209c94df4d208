"""Sharded (FSDP2) training with h3_hf.sharding on 2 CPU processes (gloo), compared with one process.

One torchrun of tests/sharding_worker.py (both models, every check) serves all the tests of this file.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from h3_hf import H3ForCausalLM, S4DForSequenceClassification, S5ForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"
sys.path.insert(0, str(WORKER.parent))
import sharding_worker  # noqa: E402

KINDS = sharding_worker.KINDS
LOADERS = {"h3": H3ForCausalLM, "s4d": S4DForSequenceClassification, "s5": S5ForSequenceClassification}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """OUT_DIR of one ``torchrun --nproc_per_node 2 tests/sharding_worker.py OUT_DIR``."""
    out = tmp_path_factory.mktemp("sharded")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf_home")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return out


def info(sharded: Path, kind: str) -> dict:
    return json.loads((sharded / kind / "info.json").read_text())


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def one_process(kind: str, batches: list[dict]) -> tuple[dict, list[float]]:
    """The worker's training in this process, float32, unsharded: (state dict, losses)."""
    model = sharding_worker.build(kind)
    losses = sharding_worker.train(model, sharding_worker.make_optimizer(model), batches, rank=0, world_size=1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_training_equals_one_process_with_the_same_global_batch(kind, sharded):
    result = info(sharded, kind)
    assert result["world_size"] == 2
    # one unit per residual block, one per SSM parameter module, and the root
    model = sharding_worker.build(kind)
    blocks = {name for name, m in model.named_modules() if type(m).__name__ in model._no_split_modules}
    ssm = {name for name, m in model.named_modules()
           if any(p in f"{name}.{n}" for p in model._keep_in_fp32_modules_strict
                  for n, _ in m.named_parameters(recurse=False))}
    assert len(blocks) == 2 and len(ssm) >= 2 and all(any(s.startswith(b + ".") for b in blocks) for s in ssm)
    assert set(result["units"]) == blocks | ssm | {""}
    if kind == "h3":
        assert any(type(model.get_submodule(b).mixer).__name__ == "H3Attention" for b in blocks)  # a hybrid

    batches = sharding_worker.global_batches(kind)
    single, single_losses = one_process(kind, batches)
    trained = load_file(str(sharded / kind / "trained.safetensors"))
    assert max_difference(trained, single) < 1e-5
    assert result["losses"] == pytest.approx(single_losses, rel=1e-5)
    # control: training moved the weights, and half the global batch ends elsewhere, so the checks above can fail
    initial = {k: v.detach() for k, v in sharding_worker.build(kind).state_dict().items()}
    assert max_difference(single, initial) > 1e-3
    half, _ = one_process(kind, [{k: v[::2] for k, v in batch.items()} for batch in batches])
    assert max_difference(half, single) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_policy_keeps_the_ssm_in_float32(kind, sharded):
    bf16 = info(sharded, kind)["bf16"]
    # inside each block's forward: SSM parameters gathered as float32, the others as bfloat16
    assert bf16["ssm_param_dtypes"] == ["Parameter:torch.float32"]
    assert bf16["other_param_dtypes"] == ["Parameter:torch.bfloat16"]
    # FFTs (H3's and S4D's convolutions) and all complex arithmetic (kernels, S5's scan) see no half precision
    assert bf16["complex_op_dtypes"] and set(bf16["complex_op_dtypes"]) <= {"torch.float32", "torch.complex64"}
    assert set(bf16["fft_dtypes"]) <= {"torch.float32", "torch.complex64"}
    assert bool(bf16["fft_dtypes"]) == (kind != "s5")  # S5 scans, the others convolve
    assert all(torch.isfinite(torch.tensor(bf16["losses"])))
    assert bf16["stored_dtypes"] == ["torch.float32"]  # the shards, gradients and AdamW states stay float32


@pytest.mark.parametrize("kind", KINDS)
def test_gathered_checkpoint_loads_in_one_process_with_the_sharded_logits(kind, sharded, tmp_path):
    saved = sharded / kind / "saved"
    sharding_worker.build(kind).save_pretrained(tmp_path / "unsharded")
    assert sorted(os.listdir(saved)) == sorted(os.listdir(tmp_path / "unsharded"))  # same files and code
    assert json.loads((saved / "config.json").read_text())["architectures"] == [LOADERS[kind].__name__]

    model = LOADERS[kind].from_pretrained(saved).eval()
    trained = load_file(str(sharded / kind / "trained.safetensors"))
    assert max_difference({k: v for k, v in model.state_dict().items()}, trained) == 0.0
    with torch.no_grad():
        logits = model(**sharding_worker.probe()).logits
    sharded_logits = load_file(str(sharded / kind / "logits.safetensors"))["logits"]
    assert logits.shape == sharded_logits.shape
    assert (logits - sharded_logits).abs().max().item() < 1e-6
    assert (logits - sharding_worker.build(kind).eval()(**sharding_worker.probe()).logits).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_run_resumed_from_the_sharded_checkpoint_ends_on_the_uninterrupted_weights(kind, sharded):
    result = info(sharded, kind)
    assert result["extra"] == {"step": sharding_worker.RESUME_AT}
    assert result["resumed_losses"] == result["losses"][sharding_worker.RESUME_AT:]
    trained = load_file(str(sharded / kind / "trained.safetensors"))
    resumed = load_file(str(sharded / kind / "resumed.safetensors"))
    assert max_difference(resumed, trained) == 0.0
    # control: the resumed run started from other weights, so only the checkpoint can have brought it here
    other = {k: v.detach() for k, v in sharding_worker.build(kind, seed=1).state_dict().items()}
    assert max_difference(other, trained) > 1e-2


@pytest.mark.parametrize("script", ["train_synthetic", "train_classifier", "train_lm"])
def test_trainer_fsdp_on_cpu_is_refused_in_one_line(script, tmp_path, capsys):
    """accelerate runs plain DDP on CPU whatever --fsdp says: the scripts refuse it instead."""
    sys.path.insert(0, str(ROOT / "scripts"))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--output_dir", str(tmp_path), "--fsdp", "--use_cpu", "true"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) <= 2  # usage line + the error
    assert "--fsdp" in err.splitlines()[-1] and "h3_hf.sharding" in err


def test_shutdown_process_group_destroys_the_group_after_a_collective(tmp_path):
    import torch.distributed as dist

    from h3_hf.sharding import shutdown_process_group

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    loss = torch.ones(3)
    dist.all_reduce(loss)
    shutdown_process_group()
    assert not dist.is_initialized()
    assert loss.tolist() == [1.0, 1.0, 1.0]
    shutdown_process_group()  # the training scripts call it in one process too: nothing to do then
