"""A few Trainer steps of a small H3 LM or S4D classifier; every process saves what it ended with.

    python tests/distributed_worker.py {h3,s4d} OUT_DIR PER_DEVICE_BATCH             # one process
    torchrun --nproc_per_node 2 tests/distributed_worker.py {h3,s4d} OUT_DIR BATCH   # DDP (gloo on CPU)

Writes OUT_DIR/rank{R}.safetensors (the unwrapped model's parameters after training) and
OUT_DIR/rank{R}.json (world size, parallel mode, backend, the wrapper class the Trainer trained).
Used by tests/test_distributed.py; dropout is off so runs differ only by how the batch was split.
"""

import json
import os
import sys

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments, default_data_collator

from h3_hf import H3Config, H3ForCausalLM, S4DConfig, S4DForSequenceClassification
from h3_hf.data import load_synthetic
from h3_hf.sharding import shutdown_process_group

STEPS = 4


def build(kind: str):
    torch.manual_seed(0)
    if kind == "h3":
        data = load_synthetic("associative_recall", num_train=64, num_validation=8, num_test=8, seed=0)["train"]
        data = data.map(lambda batch: {"labels": batch["input_ids"]}, batched=True)  # loss on every position
        config = H3Config(vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, state_size=8,
                          attn_layer_idx=[1], embedding_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)
        return H3ForCausalLM(config), data
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 16, size=(64, 24))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})
    config = S4DConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, state_size=8, num_labels=3, dropout=0.0)
    return S4DForSequenceClassification(config), data


def main(kind: str, out_dir: str, per_device_batch: int, accumulation_steps: int = 1):
    model, data = build(kind)
    args = TrainingArguments(output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=per_device_batch,
                             gradient_accumulation_steps=accumulation_steps,
                             learning_rate=1e-3, lr_scheduler_type="constant", use_cpu=True, seed=0,
                             save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
                             dataloader_num_workers=0, ddp_find_unused_parameters=False,
                             ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    trainer.train()
    rank = args.process_index
    unwrapped = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    save_file({name: p.detach().clone() for name, p in unwrapped.named_parameters()},
              os.path.join(out_dir, f"rank{rank}.safetensors"))
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": args.world_size, "parallel_mode": str(args.parallel_mode), "backend": backend,
                   "wrapped": type(trainer.model_wrapped).__name__, "steps": trainer.state.global_step,
                   "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    shutdown_process_group()
