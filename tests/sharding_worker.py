"""FSDP2 training with h3_hf.sharding of a tiny H3 hybrid LM, S4D and S5 classifiers, on 2 CPU processes (gloo).

    torchrun --nproc_per_node 2 tests/sharding_worker.py OUT_DIR

For each model ("h3", "s4d", "s5") rank 0 writes OUT_DIR/KIND/:
  trained.safetensors  full parameters after STEPS AdamW steps (float32, no mixed precision), gathered to rank 0
  resumed.safetensors  the same run restarted from its sharded (DCP) checkpoint taken after RESUME_AT steps,
                       in a model built from another seed (so a checkpoint that did not load cannot pass)
  logits.safetensors   the trained sharded model's logits on probe() (eval, every rank computes them)
  saved/               save_pretrained_from_shards of the trained model
  info.json            losses (global-batch mean per step), the FSDP units, and what a bf16 policy did: the dtypes
                       the blocks' parameters had inside forward, the dtypes every FFT and complex op saw, losses
Used by tests/test_sharding.py, which runs the same training in one process (train(..., rank=0, world_size=1)).
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.utils._python_dispatch import TorchDispatchMode

from h3_hf import (
    H3Config,
    H3ForCausalLM,
    S4DConfig,
    S4DForSequenceClassification,
    S5Config,
    S5ForSequenceClassification,
)
from h3_hf.sharding import (
    gather_full_state_dict,
    load_sharded_checkpoint,
    residual_blocks,
    save_pretrained_from_shards,
    save_sharded_checkpoint,
    shard_model,
    shutdown_process_group,
)

KINDS = ("h3", "s4d", "s5")
STEPS, RESUME_AT, GLOBAL_BATCH, LENGTH, VOCAB = 3, 1, 8, 12, 16


def build(kind: str, seed: int = 0):
    """A tiny float32 model without dropout: H3 with layer 1 attention (hidden 16), or an S4D or S5 classifier."""
    torch.manual_seed(seed)
    if kind == "h3":
        return H3ForCausalLM(H3Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      state_size=4, attn_layer_idx=[1], embedding_dropout=0.0, resid_dropout=0.0,
                                      attn_dropout=0.0))
    if kind == "s4d":
        return S4DForSequenceClassification(S4DConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                                      state_size=8, num_labels=3, dropout=0.0))
    return S5ForSequenceClassification(S5Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, state_size=8,
                                                blocks=2, num_labels=3, dropout=0.0))


def global_batches(kind: str) -> list[dict]:
    """STEPS global batches: input_ids (GLOBAL_BATCH, LENGTH) and labels (the ids for H3, a class for S5)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, LENGTH), generator=generator)
        batches.append({"input_ids": ids, "labels": ids if kind == "h3" else ids[:, 0] % 3})
    return batches


def probe() -> dict:
    """A fixed input for comparing logits: input_ids (2, LENGTH)."""
    return {"input_ids": torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(2))}


def make_optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def train(model, optimizer, batches: list[dict], rank: int, world_size: int) -> list[float]:
    """One AdamW step per global batch; this rank takes rows rank::world_size. Returns the global mean losses."""
    losses = []
    for batch in batches:
        loss = model(**{key: value[rank::world_size] for key, value in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.detach()
        if world_size > 1:
            dist.all_reduce(loss)
            loss /= world_size
        losses.append(loss.item())
    return losses


class OpDtypes(TorchDispatchMode):
    """Records the dtypes of the tensor inputs of every FFT op and of every op with a complex input or output."""

    def __init__(self):
        super().__init__()
        self.fft, self.complex = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        outputs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        if "fft" in func.__name__:
            self.fft.update(str(t.dtype) for t in inputs)
        if any(t.is_complex() for t in inputs + outputs):
            self.complex.update(str(t.dtype) for t in inputs + outputs)
        return out


def bf16_run(kind: str, rank: int, world_size: int) -> dict:
    """Two training steps under a bf16 param_dtype policy, recording what the SSM code was given."""
    model = build(kind)
    patterns = model._keep_in_fp32_modules_strict
    shard_model(model, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    seen = {"ssm": set(), "other": set()}

    def record(block, args):  # runs after FSDP's and shard_model's pre-hooks: the gathered parameters
        for name, param in block.named_parameters():
            seen["ssm" if any(p in f"{block_names[block]}.{name}" for p in patterns) else "other"].add(
                f"{type(param).__name__}:{param.dtype}")

    block_names = {module: name for name, module in model.named_modules()}
    for block in residual_blocks(model):
        block.register_forward_pre_hook(record)
    optimizer = make_optimizer(model)
    with OpDtypes() as ops:
        losses = train(model, optimizer, global_batches(kind)[:2], rank, world_size)
    stored = {str(p.dtype) for p in model.parameters()}
    return {"ssm_param_dtypes": sorted(seen["ssm"]), "other_param_dtypes": sorted(seen["other"]),
            "fft_dtypes": sorted(ops.fft), "complex_op_dtypes": sorted(ops.complex), "losses": losses,
            "stored_dtypes": sorted(stored)}


def main(out_dir: str):
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for kind in KINDS:
        out = os.path.join(out_dir, kind)
        os.makedirs(out, exist_ok=True)
        batches = global_batches(kind)
        # the uninterrupted run, with a sharded checkpoint after RESUME_AT steps
        model = shard_model(build(kind))
        units = sorted(name for name, module in model.named_modules() if isinstance(module, FSDPModule))
        optimizer = make_optimizer(model)
        losses = train(model, optimizer, batches[:RESUME_AT], rank, world_size)
        checkpoint = os.path.join(out, "checkpoint")
        save_sharded_checkpoint(checkpoint, model, optimizer, extra={"step": RESUME_AT})
        losses += train(model, optimizer, batches[RESUME_AT:], rank, world_size)
        trained = gather_full_state_dict(model)
        model.eval()
        with torch.no_grad():
            logits = model(**probe()).logits
        save_pretrained_from_shards(model, os.path.join(out, "saved"))
        # a fresh run (other initial weights) resumed from the checkpoint
        resumed_model = shard_model(build(kind, seed=1))
        resumed_optimizer = make_optimizer(resumed_model)
        extra = load_sharded_checkpoint(checkpoint, resumed_model, resumed_optimizer)
        resumed_losses = train(resumed_model, resumed_optimizer, batches[extra["step"]:], rank, world_size)
        resumed = gather_full_state_dict(resumed_model)
        info = {"world_size": world_size, "losses": losses, "resumed_losses": resumed_losses, "extra": extra,
                "units": units, "bf16": bf16_run(kind, rank, world_size)}
        if rank == 0:
            save_file({k: v.clone() for k, v in trained.items()}, os.path.join(out, "trained.safetensors"))
            save_file({k: v.clone() for k, v in resumed.items()}, os.path.join(out, "resumed.safetensors"))
            save_file({"logits": logits.contiguous()}, os.path.join(out, "logits.safetensors"))
            with open(os.path.join(out, "info.json"), "w") as f:
                json.dump(info, f, indent=1)
    shutdown_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
