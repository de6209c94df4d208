"""Train a small causal LM on a synthetic task of the H3 paper with transformers' Trainer.

    python scripts/train_synthetic.py --task induction_head --model h3 --output_dir runs/ih-h3
    python scripts/train_synthetic.py --task associative_recall --model s4d --output_dir runs/ar-s4d --seed 1

Models share one backbone (H3Config/H3ForCausalLM, the paper's 2 layers of width 32 by default):
"h3"; "attention" (every mixer causal attention, rotary positions); "s4d" (gelu(diag_ssm(x)), S4D-Inv,
ZOH); the ablations "h3_shift_only" and "h3_diag_only". Training loss: next-token cross-entropy on
every position (``--loss_on all``, the paper's protocol) or only on the scored ones (``answer``, the
default at CPU budgets). Validation accuracy is checked every ``--eval_steps``; ``--target_accuracy`` stops
training once it is reached. Writes OUTPUT_DIR/results.json (test ``eval_accuracy``, steps,
runtime, model size, task parameters), OUTPUT_DIR/training_curve.png, the model and the tokenizer
(so ``pipeline("text-generation", OUTPUT_DIR)`` works).
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, default_data_collator

from h3_hf import H3Config, H3ForCausalLM, create_ssm_optimizer
from h3_hf.data.synthetics import (
    SYNTHETIC_TASKS,
    answer_accuracy,
    load_synthetic,
    synthetic_parameters,
    synthetic_tokenizer,
)
from h3_hf.model_card import ModelCardTrainer
from h3_hf.training import flag_value, save_results, training_summary, with_default_flags

MODELS = ("h3", "attention", "s4d", "h3_shift_only", "h3_diag_only")
LOSS_ON = ("all", "answer")

# Tuned for a 2-core CPU (the paper: lr 5e-4 for 400 epochs); flags given on the command line win.
COMMON_DEFAULTS = dict(learning_rate=3e-3, weight_decay=0.1, per_device_train_batch_size=32,
                       per_device_eval_batch_size=250, lr_scheduler_type="cosine", warmup_steps=0.1,
                       eval_strategy="steps", eval_steps=250, logging_steps=50, save_strategy="no",
                       report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
                       max_grad_norm=1.0, disable_tqdm=True)
# The paper trains on the next-token loss of every position (``--loss_on all``) for 200-400 epochs. At CPU
# budgets the loss on the scored answer (``--loss_on answer``, as in Zoology's MQAR) is what gets H3 to the
# paper's accuracy on every seed within minutes, so it is the default; ``--loss_on all`` is the paper's protocol
# (README: both tables). The SSM parameters train at --learning_rate (a separate, lower --ssm_lr slowed the
# shift/diagonal SSMs enough to leave associative recall on a plateau for some seeds).
TASK_DEFAULTS = {
    "induction_head": dict(num_train_epochs=60, loss_on="answer"),
    "associative_recall": dict(num_train_epochs=80, loss_on="answer"),
    # a CPU-sized MQAR (Zoology's sweep starts at vocabulary 8192, length 64, 4 pairs, 100k examples)
    "mqar": dict(num_train_epochs=12, loss_on="answer", vocab_size=64, seq_len=64, num_kv_pairs=4,
                 num_train=10000),
}


@dataclass
class SyntheticArguments:
    task: str = field(default="associative_recall", metadata={"help": f"one of {SYNTHETIC_TASKS}"})
    model: str = field(default="h3", metadata={"help": f"one of {MODELS}"})
    vocab_size: int | None = field(default=None, metadata={"help": "task vocabulary incl. '=>' and '.'"})
    seq_len: int | None = field(default=None, metadata={"help": "input length (the paper's)"})
    num_kv_pairs: int | None = field(default=None, metadata={"help": "mqar only"})
    num_train: int = field(default=5000)
    num_validation: int = field(default=500)
    num_test: int = field(default=500)
    dataset_seed: int | None = field(default=None, metadata={"help": "dataset seed (default: --seed)"})
    hidden_size: int = field(default=32)
    num_hidden_layers: int = field(default=2)
    state_size: int = field(default=64)
    num_attention_heads: int = field(default=4)
    embedding_dropout: float = field(default=0.1)
    ssm_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the SSM parameters (no weight decay); default: --learning_rate"})
    loss_on: str = field(default="answer", metadata={"help": f"one of {LOSS_ON}: training positions in the loss"})
    target_accuracy: float | None = field(default=None, metadata={"help": "stop once validation reaches it"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from the model saved in this folder (e.g. a run at a shorter --seq_len) instead of a fresh one"})


def default_args(argv: list[str]) -> list[str]:
    task = flag_value(argv, "task", "associative_recall")
    return with_default_flags(argv, {**COMMON_DEFAULTS, **TASK_DEFAULTS.get(task, {})})


def build_model(args: SyntheticArguments, vocab_size: int, pad_token_id: int) -> H3ForCausalLM:
    """The shared 2-layer backbone with the mixer the ``--model`` flag names."""
    kwargs = dict(mixer_type="h3")
    if args.model == "attention":
        kwargs.update(attn_layer_idx=list(range(args.num_hidden_layers)),
                      rotary_emb_dim=args.hidden_size // args.num_attention_heads)
    elif args.model == "s4d":
        kwargs.update(mixer_type="s4d", discretization="zoh")
    elif args.model != "h3":
        kwargs.update(mixer_type=args.model)
    config = H3Config(vocab_size=vocab_size, pad_vocab_size_multiple=1, hidden_size=args.hidden_size,
                      num_hidden_layers=args.num_hidden_layers, state_size=args.state_size,
                      num_attention_heads=args.num_attention_heads, embedding_dropout=args.embedding_dropout,
                      resid_dropout=0.0, pad_token_id=pad_token_id, eos_token_id=None, bos_token_id=None, **kwargs)
    return H3ForCausalLM(config)


def preprocess_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def compute_metrics(eval_pred) -> dict:
    return {"accuracy": answer_accuracy(eval_pred.predictions, eval_pred.label_ids)}


class StopAtAccuracy(TrainerCallback):
    """Stops training once ``eval_accuracy`` reaches ``target``."""

    def __init__(self, target: float):
        self.target = target

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and metrics.get("eval_accuracy", 0.0) >= self.target:
            control.should_training_stop = True


def plot_curve(log_history: list[dict], path: str, title: str):
    """PNG: training loss and validation accuracy against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    acc = [(h["step"], h["eval_accuracy"]) for h in log_history if "eval_accuracy" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    if acc:
        ax2.plot(*zip(*acc), color="tab:red", marker=".", label="validation accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("validation accuracy", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((SyntheticArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=default_args(argv))
    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {args.model!r}")
    if args.loss_on not in LOSS_ON:
        raise ValueError(f"--loss_on must be one of {LOSS_ON}, got {args.loss_on!r}")
    data_seed = training_args.seed if args.dataset_seed is None else args.dataset_seed
    data = load_synthetic(args.task, num_train=args.num_train, num_validation=args.num_validation,
                          num_test=args.num_test, seed=data_seed,
                          vocab_size=args.vocab_size, seq_len=args.seq_len, num_kv_pairs=args.num_kv_pairs)
    params = synthetic_parameters(data)
    tokenizer = synthetic_tokenizer(params["vocab_size"])
    train = data["train"]
    if args.loss_on == "all":
        train = train.map(lambda batch: {"labels": batch["input_ids"]}, batched=True)
    torch.manual_seed(training_args.seed)
    model = build_model(args, len(tokenizer), tokenizer.pad_token_id)
    if args.init_from is not None:  # same architecture required: load_state_dict is strict
        model.load_state_dict(H3ForCausalLM.from_pretrained(args.init_from).state_dict())
    optimizer = create_ssm_optimizer(model, lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
                                     ssm_lr=args.ssm_lr,  # None: the main learning rate
                                     betas=(training_args.adam_beta1, training_args.adam_beta2),
                                     eps=training_args.adam_epsilon)
    callbacks = [StopAtAccuracy(args.target_accuracy)] if args.target_accuracy is not None else []
    trainer = ModelCardTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=data["validation"],
                               data_collator=default_data_collator, compute_metrics=compute_metrics,
                               preprocess_logits_for_metrics=preprocess_logits, optimizers=(optimizer, None),
                               callbacks=callbacks, processing_class=tokenizer)
    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    validation = trainer.evaluate()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    results = {
        "task": args.task,
        "model": args.model,
        "eval_accuracy": test["test_accuracy"],
        "validation_accuracy": validation["eval_accuracy"],
        "test_loss": test["test_loss"],
        "global_step": train_result.global_step,
        "epochs": train_result.global_step / max(1, len(trainer.get_train_dataloader())),
        "train_runtime": train_result.metrics["train_runtime"],
        "wall_time": time.time() - start,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "random_baseline": random_baseline(data["test"]),
        "seed": training_args.seed,
        "world_size": training_args.world_size,
        "task_params": params,
        "example_prompt": example_prompt(data["test"][0], tokenizer),
        "args": asdict(args),
        "training_args": training_summary(training_args),
        "config": model.config.to_diff_dict(),
    }
    if trainer.is_world_process_zero():
        save_results(training_args.output_dir, results,
                     ("task", "model", "eval_accuracy", "global_step", "train_runtime"))
        plot_curve(trainer.state.log_history, os.path.join(training_args.output_dir, "training_curve.png"),
                   f"{args.model} on {args.task} (test accuracy {results['eval_accuracy']:.1%})")
    trainer.save_with_card(results)  # model, code, tokenizer, README.md card; uploaded with --push_to_hub
    return results


def example_prompt(example: dict, tokenizer) -> str:
    """The text of ``example`` up to its first scored position (what the model must continue)."""
    first_scored = next(i for i, label in enumerate(example["labels"]) if label != -100)
    return tokenizer.decode(example["input_ids"][:first_scored])


def random_baseline(split) -> float:
    """Accuracy of guessing uniformly among the answers that occur at the scored positions."""
    labels = np.asarray(split["labels"])
    return 1.0 / len(np.unique(labels[labels != -100]))


if __name__ == "__main__":
    main()
