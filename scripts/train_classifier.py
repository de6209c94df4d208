"""Train an S4D or S5 sequence classifier with transformers' Trainer (sequential digits, irregular digits, ListOps).

Example:
    python scripts/train_classifier.py --model s4d --dataset digits --output_dir runs/s4d-digits
    python scripts/train_classifier.py --model s4d --dataset listops --output_dir runs/s4d-listops
    python scripts/train_classifier.py --model s5 --dataset digits --output_dir runs/s5-digits
    python scripts/train_classifier.py --model s5 --dataset digits_irregular --output_dir runs/s5-irregular
    python scripts/train_classifier.py --model s5 --dataset digits_irregular --use_timesteps false ...

digits: scikit-learn's 8x8 digits read as length-64 pixel sequences (1438 train / 359 test images).
digits_irregular drops 30% of each image's pixels at random; S5 gets the gaps as timesteps unless
--use_timesteps false (same data, same budget: the comparison of the S5 paper). listops: generated ListOps
expressions (tokens), classified by their value 0-9.

The defaults below are the ones a run uses; some depend on --dataset and --model (the S5 paper's learning rate and
weight decay for S5). A progress bar shows the steps. Writes OUTPUT_DIR/results.json (eval_accuracy,
train_runtime, config, ...), the model (safetensors + config, with the ListOps tokenizer) and
OUTPUT_DIR/kernels_layer0.png (the learned SSM kernels of the first layer).
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from script_utils import (
    ThreadArguments,
    TrainingClock,
    check_checkpoint_folder,
    checkpoint_training_seconds,
    classification_accuracy,
    defaults_by_choice,
    flag_value,
    parse_trainer_arguments,
    save_results,
    set_threads,
    trainer_argument_parser,
    training_summary,
    usage_errors,
)
from transformers import TrainingArguments, default_data_collator

from h3_hf import S4DConfig, S4DForSequenceClassification, S5Config, S5ForSequenceClassification, create_ssm_optimizer
from h3_hf.configuration_s5 import ACTIVATIONS
from h3_hf.data import (
    LISTOPS_VOCAB,
    PaddingCollator,
    listops_tokenizer,
    load_irregular_digits,
    load_listops,
    load_sequential_digits,
)
from h3_hf.model_card import ModelCardTrainer
from h3_hf.sharding import check_trainer_fsdp, shutdown_process_group
from h3_hf.ssm_init import DIAGONAL_INITS
from h3_hf.ssm_kernels import DISCRETIZATIONS
from h3_hf.validation import POOLINGS

MODELS = ("s4d", "s5")
DATASETS = ("digits", "digits_irregular", "listops")
DEFAULT_MODEL, DEFAULT_DATASET = "s4d", "digits"

# Defaults per dataset (TrainingArguments, model or data options); options given on the command line win.
DIGITS_DEFAULTS = dict(learning_rate=1e-2, weight_decay=0.01, num_train_epochs=30, per_device_train_batch_size=32,
                       per_device_eval_batch_size=128, warmup_steps=45, lr_scheduler_type="cosine")
DATASET_DEFAULTS = {
    "digits": DIGITS_DEFAULTS,
    "digits_irregular": DIGITS_DEFAULTS,
    "listops": dict(learning_rate=1e-2, weight_decay=0.05, num_train_epochs=4, per_device_train_batch_size=32,
                    per_device_eval_batch_size=64, warmup_steps=60, lr_scheduler_type="cosine",
                    train_sampling_strategy="group_by_length",
                    # a two-sided kernel helps ListOps (the value depends on the whole expression)
                    bidirectional=True, dropout=0.0),
}
# Per-model defaults (the S5 paper's lr / weight decay), applied over the dataset's.
MODEL_DEFAULTS = {"s4d": {}, "s5": dict(learning_rate=4e-3, weight_decay=0.05)}
COMMON_DEFAULTS = dict(eval_strategy="epoch", save_strategy="no", logging_steps=25, report_to="none",
                       dataloader_num_workers=0, dataloader_pin_memory=False, max_grad_norm=1.0)


def by_choice(key: str, fallback) -> str:
    """The defaults of option ``key`` per --dataset and --model, for its help text."""
    text = defaults_by_choice(DATASET_DEFAULTS, key, fallback)
    overrides = [f"{defaults[key]} for --model {model}" for model, defaults in MODEL_DEFAULTS.items()
                 if key in defaults]
    return text + (f"; {', '.join(overrides)}" if overrides else "")


@dataclass
class ModelArguments:
    _argument_group_name = "model"
    model: str = field(default=DEFAULT_MODEL, metadata={"choices": MODELS, "help": "the SSM of every layer"})
    hidden_size: int = field(default=64, metadata={"help": "model width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "layers"})
    state_size: int = field(default=64, metadata={"help": "SSM state size"})
    init: str = field(default="inv", metadata={"choices": DIAGONAL_INITS, "help": "S4D: initialisation of A"})
    discretization: str = field(default="zoh", metadata={"choices": DISCRETIZATIONS,
                                                          "help": "discretization of the SSM"})
    bidirectional: bool = field(default=False, metadata={
        "help": f"two-sided SSM kernels (default: {by_choice('bidirectional', False)})"})
    dropout: float = field(default=0.1, metadata={"help": f"dropout (default: {by_choice('dropout', 0.1)})"})
    prenorm: bool = field(default=True, metadata={"help": "layer norm before each block (false: after it)"})
    pooling: str = field(default="mean", metadata={"choices": POOLINGS,
                                                   "help": "how the sequence is reduced to one vector"})
    ssm_lr: float = field(default=1e-3, metadata={"help": "learning rate of the SSM parameters (no weight decay)"})
    blocks: int = field(default=4, metadata={"help": "S5: HiPPO-N blocks J"})
    conj_sym: bool = field(default=True, metadata={"help": "S5: conjugate symmetry (half the state stored)"})
    s5_activation: str = field(default="half_glu1", metadata={"choices": ACTIVATIONS,
                                                              "help": "S5: activation after the SSM"})


@dataclass
class DataArguments:
    _argument_group_name = "data"
    dataset: str = field(default=DEFAULT_DATASET, metadata={"choices": DATASETS, "help": "the task"})
    listops_train_size: int = field(default=12000, metadata={
        "help": "listops: training examples (enough to leave the majority-class plateau within a few CPU minutes)"})
    listops_test_size: int = field(default=500, metadata={"help": "listops: test examples"})
    listops_min_length: int = field(default=100, metadata={"help": "listops: shortest expression (tokens)"})
    listops_max_length: int = field(default=500, metadata={"help": "listops: longest expression (tokens)"})
    data_seed_listops: int = field(default=0, metadata={"help": "listops: seed of the generated data"})
    drop_fraction: float = field(default=0.3, metadata={"help": "digits_irregular: fraction of pixels dropped"})
    use_timesteps: bool = field(default=True, metadata={
        "help": "digits_irregular: give S5 the gaps as timesteps (S4D needs --use_timesteps false)"})


# The TrainingArguments listed by --help: those the script sets (their defaults are the script's) and a few often
# given ones; --help-all lists the rest.
TRAINER_OPTIONS = {
    "output_dir": "folder of the model, results.json and kernels_layer0.png (default: trainer_output)",
    "seed": "seed of the model's initialisation and the batch order",
    "learning_rate": f"peak AdamW learning rate (default: {by_choice('learning_rate', 5e-5)})",
    "weight_decay": f"AdamW weight decay; biases, norms and SSM parameters get none "
                    f"(default: {by_choice('weight_decay', 0.0)})",
    "num_train_epochs": f"training epochs (default: {by_choice('num_train_epochs', 3)})",
    "max_steps": "if > 0: train this many steps, whatever --num_train_epochs says",
    "per_device_train_batch_size": "training batch size (per process)",
    "per_device_eval_batch_size": f"evaluation batch size, per process "
                                  f"(default: {by_choice('per_device_eval_batch_size', 8)})",
    "lr_scheduler_type": "learning-rate schedule after the warm-up: cosine, linear, constant, ...",
    "warmup_steps": f"warm-up steps; below 1, a fraction of all steps (default: {by_choice('warmup_steps', 0)})",
    "train_sampling_strategy": f"order of the training examples; group_by_length batches expressions of similar "
                               f"length (default: {by_choice('train_sampling_strategy', 'random')})",
    "eval_strategy": "when the test accuracy is computed during training",
    "logging_steps": "steps between logged training losses",
    "save_strategy": "when checkpoints are saved (steps: every --save_steps, for --resume_from_checkpoint)",
    "max_grad_norm": "gradient clipping norm",
    "resume_from_checkpoint": "continue the run from this checkpoint-N folder of OUTPUT_DIR",
    "push_to_hub": "upload the model, its code and a model card at the end (repo: --hub_model_id)",
    "disable_tqdm": "hide the progress bar (default: shown)",
    "report_to": "experiment trackers to log to",
    "dataloader_num_workers": "data-loading worker processes (0: in the training process)",
    "dataloader_pin_memory": "pin batches in memory (for GPU training)",
}


def script_defaults(dataset: str, model: str) -> dict:
    """The defaults of a run of ``model`` on ``dataset`` (unknown names get the common ones; parsing rejects them)."""
    return {**COMMON_DEFAULTS, **DATASET_DEFAULTS.get(dataset, {}), **MODEL_DEFAULTS.get(model, {})}


def build_parser(dataset: str, model: str):
    """The command-line parser, its defaults those of a run of ``model`` on ``dataset``."""
    return trainer_argument_parser(
        __doc__, (ModelArguments, DataArguments, ThreadArguments, TrainingArguments),
        usage="%(prog)s [--model MODEL] [--dataset DATASET] [--output_dir OUTPUT_DIR] [OPTION VALUE ...]",
        defaults=script_defaults(dataset, model), trainer_options=TRAINER_OPTIONS)


def build_data(data_args: DataArguments):
    """(DatasetDict, the config fields the data fixes, the data collator) of ``--dataset``."""
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


def build_config(model_args: ModelArguments, data_kwargs: dict) -> S4DConfig | S5Config:
    """The classifier's config from the model options and the fields the data fixes."""
    common = dict(hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
                  state_size=model_args.state_size, discretization=model_args.discretization,
                  bidirectional=model_args.bidirectional, dropout=model_args.dropout, prenorm=model_args.prenorm,
                  pooling=model_args.pooling, **data_kwargs)
    if model_args.model == "s5":
        return S5Config(blocks=model_args.blocks, conj_sym=model_args.conj_sym, activation=model_args.s5_activation,
                        **common)
    return S4DConfig(init=model_args.init, **common)


def build_model(model_args: ModelArguments, data_kwargs: dict):
    """A new classifier of :func:`build_config`."""
    config = build_config(model_args, data_kwargs)
    if model_args.model == "s5":
        return S5ForSequenceClassification(config)
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
    parser = build_parser(flag_value(argv, "dataset", DEFAULT_DATASET), flag_value(argv, "model", DEFAULT_MODEL))
    model_args, data_args, threads, training_args = parse_trainer_arguments(parser, argv)
    with usage_errors(parser):  # --fsdp shards only on accelerators: refuse it on CPU instead of running DDP
        check_trainer_fsdp(training_args)
    if data_args.dataset == "digits_irregular" and data_args.use_timesteps and model_args.model != "s5":
        parser.error("--dataset digits_irregular with timesteps needs --model s5 (a convolution kernel cannot "
                     "take per-position steps); pass --use_timesteps false for S4D")
    check_checkpoint_folder(parser, training_args.resume_from_checkpoint)
    set_threads(threads.threads)
    torch.manual_seed(training_args.seed)
    with usage_errors(parser):  # the data loaders check their options
        data, data_kwargs, collator = build_data(data_args)
    with usage_errors(parser):  # the config checks the model options
        model = build_model(model_args, data_kwargs)
    optimizer = create_ssm_optimizer(model, lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
                                     ssm_lr=model_args.ssm_lr,
                                     betas=(training_args.adam_beta1, training_args.adam_beta2),
                                     eps=training_args.adam_epsilon)
    seconds_before = checkpoint_training_seconds(training_args.resume_from_checkpoint)
    trainer = ModelCardTrainer(model=model, args=training_args, train_dataset=data["train"],
                               eval_dataset=data["test"], data_collator=collator,
                               compute_metrics=classification_accuracy, optimizers=(optimizer, None),
                               callbacks=[TrainingClock(seconds_before)],
                               processing_class=listops_tokenizer() if data_args.dataset == "listops" else None)
    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    results = {
        "model": model_args.model,
        "dataset": data_args.dataset,
        "eval_accuracy": metrics["eval_accuracy"],
        "eval_loss": metrics["eval_loss"],
        # the whole run's training time: a resumed run adds the time recorded in its checkpoint
        "train_runtime": seconds_before + train_result.metrics["train_runtime"],
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
    shutdown_process_group()  # under torchrun / accelerate launch; nothing to do in one process
