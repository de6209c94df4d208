"""Train an SSM sequence classifier with transformers' Trainer.

    python scripts/train_classifier.py --model s4d --dataset digits --output_dir runs/s4d-digits
    python scripts/train_classifier.py --model s4d --dataset listops --output_dir runs/s4d-listops
    python scripts/train_classifier.py --model s5 --dataset digits --output_dir runs/s5-digits
    python scripts/train_classifier.py --model s5 --dataset digits_irregular --output_dir runs/s5-irregular
    python scripts/train_classifier.py --model s5 --dataset digits_irregular --use_timesteps false ...

``digits_irregular`` drops 30% of each image's pixels at random; S5 gets the gaps as ``timesteps``
unless ``--use_timesteps false`` (same data, same budget: the comparison of the S5 paper).

Any TrainingArguments flag can be added (``--learning_rate``, ``--num_train_epochs``, ``--seed``...);
per-dataset defaults (below) are used for the ones not given. Writes OUTPUT_DIR/results.json
(eval_accuracy, train_runtime, config, ...), the model (safetensors + config) and
OUTPUT_DIR/kernels_layer0.png (the learned SSM kernels of the first layer).
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments, default_data_collator

from h3_hf import S4DConfig, S4DForSequenceClassification, S5Config, S5ForSequenceClassification, create_ssm_optimizer
from h3_hf.data import (
    LISTOPS_VOCAB,
    PaddingCollator,
    listops_tokenizer,
    load_irregular_digits,
    load_listops,
    load_sequential_digits,
)
from h3_hf.model_card import ModelCardTrainer
from h3_hf.training import (
    classification_accuracy,
    flag_value,
    save_results,
    training_summary,
    with_default_flags,
)

MODELS = ("s4d", "s5")
DATASETS = ("digits", "digits_irregular", "listops")

# Defaults per dataset, used for every flag (TrainingArguments, model or data) the command line does not set.
TRAINING_DEFAULTS = {
    "digits": dict(learning_rate=1e-2, weight_decay=0.01, num_train_epochs=30, per_device_train_batch_size=32,
                   per_device_eval_batch_size=128, warmup_steps=45, lr_scheduler_type="cosine"),
    "listops": dict(learning_rate=1e-2, weight_decay=0.05, num_train_epochs=4, per_device_train_batch_size=32,
                    per_device_eval_batch_size=64, warmup_steps=60, lr_scheduler_type="cosine",
                    train_sampling_strategy="group_by_length",
                    # model/data defaults for ListOps: a two-sided kernel and enough examples to escape
                    # the majority-class plateau within a few CPU minutes
                    bidirectional=True, dropout=0.0, listops_train_size=12000, listops_max_length=500),
}
TRAINING_DEFAULTS["digits_irregular"] = TRAINING_DEFAULTS["digits"]
# Per-model defaults (the S5 paper's lr / weight decay), applied over the dataset's.
MODEL_DEFAULTS = {"s5": dict(learning_rate=4e-3, weight_decay=0.05)}
COMMON_DEFAULTS = dict(eval_strategy="epoch", save_strategy="no", logging_steps=25, report_to="none",
                       dataloader_num_workers=0, dataloader_pin_memory=False, max_grad_norm=1.0)


@dataclass
class ModelArguments:
    model: str = field(default="s4d", metadata={"help": f"one of {MODELS}"})
    hidden_size: int = field(default=64)
    num_hidden_layers: int = field(default=4)
    state_size: int = field(default=64)
    init: str = field(default="inv", metadata={"help": "inv, lin or legs"})
    discretization: str = field(default="zoh", metadata={"help": "zoh or bilinear"})
    bidirectional: bool = field(default=False)
    dropout: float = field(default=0.1)
    prenorm: bool = field(default=True)
    pooling: str = field(default="mean", metadata={"help": "mean or last"})
    ssm_lr: float = field(default=1e-3, metadata={"help": "learning rate of the SSM parameters (no weight decay)"})
    blocks: int = field(default=4, metadata={"help": "S5: HiPPO-N blocks J"})
    conj_sym: bool = field(default=True, metadata={"help": "S5: conjugate symmetry"})
    s5_activation: str = field(default="half_glu1", metadata={"help": "S5: half_glu1, half_glu2, full_glu, gelu"})


@dataclass
class DataArguments:
    dataset: str = field(default="digits", metadata={"help": f"one of {DATASETS}"})
    listops_train_size: int = field(default=4000)
    listops_test_size: int = field(default=500)
    listops_min_length: int = field(default=100)
    listops_max_length: int = field(default=1000)
    data_seed_listops: int = field(default=0)
    drop_fraction: float = field(default=0.3, metadata={"help": "digits_irregular: fraction of pixels dropped"})
    use_timesteps: bool = field(default=True, metadata={"help": "digits_irregular: give S5 the gaps as timesteps"})


def default_args(argv: list[str]) -> list[str]:
    """Put the dataset's default flags before the user's, so the user's win (argparse keeps the last)."""
    dataset = flag_value(argv, "dataset", "digits")
    model = flag_value(argv, "model", "s4d")
    return with_default_flags(argv, {**COMMON_DEFAULTS, **TRAINING_DEFAULTS.get(dataset, {}),
                                     **MODEL_DEFAULTS.get(model, {})})


def build_data(data_args: DataArguments):
    if data_args.dataset == "digits":
        data = load_sequential_digits()
        return data, dict(input_size=1, num_labels=10), default_data_collator
    if data_args.dataset == "digits_irregular":
        data = load_irregular_digits(drop_fraction=data_args.drop_fraction)
        if not data_args.use_timesteps:
            data = data.remove_columns("timesteps")
        return data, dict(input_size=1, num_labels=10), default_data_collator
    data = load_listops(data_args.listops_train_size, data_args.listops_test_size,
                        min_length=data_args.listops_min_length, max_length=data_args.listops_max_length,
                        seed=data_args.data_seed_listops)
    return data, dict(vocab_size=len(LISTOPS_VOCAB), num_labels=10, pad_token_id=0), PaddingCollator(0)


def build_model(model_args: ModelArguments, data_kwargs: dict):
    if model_args.model == "s5":
        config = S5Config(hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
                          state_size=model_args.state_size, blocks=model_args.blocks, conj_sym=model_args.conj_sym,
                          discretization=model_args.discretization, bidirectional=model_args.bidirectional,
                          activation=model_args.s5_activation, dropout=model_args.dropout,
                          prenorm=model_args.prenorm, pooling=model_args.pooling, **data_kwargs)
        return S5ForSequenceClassification(config)
    config = S4DConfig(hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
                       state_size=model_args.state_size, init=model_args.init,
                       discretization=model_args.discretization, bidirectional=model_args.bidirectional,
                       dropout=model_args.dropout, prenorm=model_args.prenorm, pooling=model_args.pooling,
                       **data_kwargs)
    return S4DForSequenceClassification(config)


def plot_kernels(model, path: str, num_channels: int = 8):
    """PNG of the first layer's learned kernels (first ``num_channels`` channels).

    S4D: the convolution kernels; S5 (MIMO): the response of every output to an impulse on input 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = model.base_model.layers[0].layer
    length = 64 if model.config.vocab_size is None else 256
    with torch.no_grad():
        if model.config.model_type == "s5":
            impulse = torch.zeros(1, length, model.config.hidden_size)
            impulse[0, 0, 0] = 1.0
            response = layer.ssm(impulse) - layer.ssm.D * impulse  # the SSM part, without the skip
            kernel = response[0, :, :num_channels].T.float().cpu().numpy()
        else:
            kernel = layer.kernel(length)[0, :num_channels].float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    for h, k in enumerate(kernel):
        ax.plot(k, label=f"channel {h}")
    ax.set_xlabel("lag")
    ax.set_ylabel("K[h, lag]")
    ax.set_title(f"{model.config.model_type} layer-0 kernels ({model.config.discretization})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=default_args(argv))
    if model_args.model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {model_args.model!r}")
    if data_args.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {data_args.dataset!r}")
    if data_args.dataset == "digits_irregular" and data_args.use_timesteps and model_args.model != "s5":
        raise ValueError("--dataset digits_irregular with timesteps needs --model s5 (a convolution kernel cannot "
                         "take per-position steps); pass --use_timesteps false for S4D")
    torch.manual_seed(training_args.seed)
    data, data_kwargs, collator = build_data(data_args)
    model = build_model(model_args, data_kwargs)
    optimizer = create_ssm_optimizer(model, lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
                                     ssm_lr=model_args.ssm_lr,
                                     betas=(training_args.adam_beta1, training_args.adam_beta2),
                                     eps=training_args.adam_epsilon)
    trainer = ModelCardTrainer(model=model, args=training_args, train_dataset=data["train"],
                               eval_dataset=data["test"], data_collator=collator,
                               compute_metrics=classification_accuracy, optimizers=(optimizer, None),
                               processing_class=listops_tokenizer() if data_args.dataset == "listops" else None)
    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    results = {
        "model": model_args.model,
        "dataset": data_args.dataset,
        "eval_accuracy": metrics["eval_accuracy"],
        "eval_loss": metrics["eval_loss"],
        "train_runtime": train_result.metrics["train_runtime"],
        "wall_time": time.time() - start,
        "global_step": train_result.global_step,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_size": len(data["train"]),
        "test_size": len(data["test"]),
        "majority_class_accuracy": max(data["test"]["labels"].count(c) for c in set(data["test"]["labels"]))
        / len(data["test"]),
        "seed": training_args.seed,
        "world_size": training_args.world_size,
        "example_prompt": "[MAX 2 9 [MIN 4 7 ] 0 ]" if data_args.dataset == "listops" else None,
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "training_args": training_summary(training_args),
        "config": model.config.to_diff_dict(),
    }
    if trainer.is_world_process_zero():
        save_results(training_args.output_dir, results,
                     ("model", "dataset", "eval_accuracy", "train_runtime", "majority_class_accuracy"))
        plot_kernels(model, os.path.join(training_args.output_dir, "kernels_layer0.png"))
    trainer.save_with_card(results)  # model, code, tokenizer, README.md card; uploaded with --push_to_hub
    return results


if __name__ == "__main__":
    main()
