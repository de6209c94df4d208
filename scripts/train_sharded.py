"""Sharded (FSDP2) training of H3 on a synthetic task in a plain torch loop: the path that also runs on CPU.

Example:
    torchrun --nproc_per_node 2 scripts/train_sharded.py --output_dir runs/ar-sharded
    torchrun --nproc_per_node 8 scripts/train_sharded.py --output_dir runs/ar-sharded --bf16 --hidden_size 256
    python scripts/train_sharded.py --output_dir runs/ar-one-process          # a group of one process

The model is sharded with ``h3_hf.sharding.shard_model``: one FSDP unit per residual block and per SSM parameter
module, whose parameters stay float32 (``--bf16`` computes the rest in bfloat16). Each process trains on its share of
every global batch (``--global_batch_size`` examples, split evenly). Every ``--save_steps`` a sharded checkpoint
(torch distributed checkpoint: model, optimizer, step) is written to OUTPUT_DIR/checkpoint, and a run started again
with the same OUTPUT_DIR continues from it. At the end OUTPUT_DIR holds what ``save_pretrained`` writes (weights,
config, code) and the task's tokenizer, gathered to rank 0, and results.json with the test accuracy.
Backend: nccl when CUDA is available, else gloo. The Trainer scripts shard only on GPUs (accelerate's FSDP).
"""

import json
import os

import torch
import torch.distributed as dist
from script_utils import ScriptArgumentParser
from torch.distributed.fsdp import MixedPrecisionPolicy
from tqdm.auto import tqdm

from h3_hf import H3Config, H3ForCausalLM
from h3_hf.data import load_synthetic, synthetic_parameters, synthetic_tokenizer
from h3_hf.data.synthetics import answer_accuracy
from h3_hf.sharding import (
    load_sharded_checkpoint,
    save_pretrained_from_shards,
    save_sharded_checkpoint,
    shard_model,
    shutdown_process_group,
)


def parse_args(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--output_dir", required=True, help="folder of the checkpoint, the model and results.json")
    parser.add_argument("--task", choices=["associative_recall", "induction_head"], default="associative_recall",
                        help="the synthetic task")
    parser.add_argument("--num_train", type=int, default=5000, help="training examples")
    parser.add_argument("--num_test", type=int, default=500, help="test examples")
    parser.add_argument("--hidden_size", type=int, default=32, help="model width")
    parser.add_argument("--num_hidden_layers", type=int, default=2, help="layers")
    parser.add_argument("--max_steps", type=int, default=2000, help="optimizer steps")
    parser.add_argument("--global_batch_size", type=int, default=32, help="examples per step over all processes")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="AdamW learning rate (constant)")
    parser.add_argument("--save_steps", type=int, default=500, help="steps between sharded checkpoints (0: none)")
    parser.add_argument("--bf16", action="store_true", help="compute blocks in bfloat16 (SSM parameters stay float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights")
    args = parser.parse_args(argv)
    for name in ("num_train", "num_test", "hidden_size", "num_hidden_layers", "max_steps", "global_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be >= 1, got {getattr(args, name)}")
    if args.save_steps < 0:
        parser.error(f"argument --save_steps: must be >= 0, got {args.save_steps}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.global_batch_size % world:
        parser.error(f"argument --global_batch_size: {args.global_batch_size} does not split evenly over {world} "
                     "processes")
    return args


def init_process_group() -> torch.device:
    """torchrun's environment, or a group of one process when started without it; returns this rank's device."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def main(argv=None):
    args = parse_args(argv)
    device = init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_synthetic(args.task, seed=args.seed, num_train=args.num_train, num_validation=1, num_test=args.num_test)
    train_ids = torch.tensor(data["train"]["input_ids"])  # (num_train, length), every example the same length
    train_labels = torch.tensor(data["train"]["labels"])  # -100 except at the answer
    vocab = synthetic_parameters(data)["vocab_size"]

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = H3Config(vocab_size=vocab, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                      state_size=64, embedding_dropout=0.0, pad_vocab_size_multiple=1)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 else None
    model = shard_model(H3ForCausalLM(config).to(device), mp_policy=policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)

    checkpoint = os.path.join(args.output_dir, "checkpoint")
    start = load_sharded_checkpoint(checkpoint, model, optimizer)["step"] if os.path.isdir(checkpoint) else 0
    share = args.global_batch_size // world
    order = torch.Generator().manual_seed(args.seed)
    losses = []
    model.train()
    for step in tqdm(range(args.max_steps), disable=rank != 0, desc="steps"):
        batch = torch.randint(0, len(train_ids), (args.global_batch_size,), generator=order)  # same on every rank
        if step < start:
            continue  # the draws above keep the batch order of an uninterrupted run
        rows = batch[rank * share:(rank + 1) * share]
        loss = model(input_ids=train_ids[rows].to(device), labels=train_labels[rows].to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if args.save_steps and (step + 1) % args.save_steps == 0 and step + 1 < args.max_steps:
            save_sharded_checkpoint(checkpoint, model, optimizer, extra={"step": step + 1})

    model.eval()
    test_ids = torch.tensor(data["test"]["input_ids"])
    test_labels = torch.tensor(data["test"]["labels"])
    with torch.no_grad():
        logits = model(input_ids=test_ids.to(device)).logits  # every rank runs the whole test set
    accuracy = answer_accuracy(logits.argmax(-1).cpu().numpy(), test_labels.numpy())
    save_pretrained_from_shards(model, args.output_dir)
    if rank == 0:
        synthetic_tokenizer(vocab).save_pretrained(args.output_dir)
        results = {"test_accuracy": accuracy, "steps": args.max_steps, "resumed_from_step": start,
                   "processes": world, "bf16": args.bf16, "last_losses": losses[-5:]}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(json.dumps(results))
    shutdown_process_group()


if __name__ == "__main__":
    main()
