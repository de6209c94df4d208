"""Train or fine-tune a causal language model on text with transformers' Trainer (run_clm for H3, GPT-2, Mamba).

Example:
    python scripts/train_lm.py --model_type h3 --train_file a.txt --validation_file b.txt --output_dir out \\
        --hidden_size 128 --num_hidden_layers 4 --block_size 128 --max_steps 400 \\
        --per_device_train_batch_size 16 --learning_rate 2e-3 --seed 1 --report_to none
    python scripts/train_lm.py --dataset_name stdlib --model_type h3 --attn_layer_idx 1 --output_dir runs/lm
    python scripts/train_lm.py --model_name_or_path h3-125m --train_file notes.txt --output_dir runs/ft

Data: plain-text files (--train_file / --validation_file, one or more each), a saved `datasets` folder with a "text"
column and "train" / "validation" splits (--dataset_name DIR), or the Python standard library of this interpreter
(--dataset_name stdlib: source code, or stdlib-docstrings: its docstrings as English prose; the split is fixed by
file, see h3_hf/data/text_corpus.py). Texts are tokenized with --tokenizer_name, or with a byte-level BPE tokenizer
of --tokenizer_vocab_size tokens trained on the training texts (saved with the model); every text ends with the
end-of-text token, and the token stream is cut into --block_size blocks (the remainder is dropped, as in run_clm).

Model: --model_type h3 | gpt2 | mamba from scratch at --hidden_size / --num_hidden_layers (H3: --attn_layer_idx
for attention layers, --state_size), or --model_name_or_path to continue from a saved or converted checkpoint.
Mamba without its CUDA kernels (mamba_ssm) runs transformers' PyTorch path; with the mambapy package installed
(part of this project's dev extra) that path scans in parallel (MambaConfig.use_mambapy), else with a Python loop
over positions whose backward is quadratic in --block_size.
All TrainingArguments are accepted (resume, bf16, torchrun / accelerate, push_to_hub). Writes OUTPUT_DIR/results.json
(eval_loss, perplexity, num_parameters, train_tokens, train_runtime, ...), OUTPUT_DIR/loss_curve.png, the model and
the tokenizer (pipeline("text-generation", OUTPUT_DIR) generates; for H3, `import h3_hf` first).
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import chain

import torch
from datasets import DatasetDict, load_dataset, load_from_disk
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.utils.import_utils import is_mambapy_available

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_utils import (  # noqa: E402
    ThreadArguments,
    TrainingClock,
    check_checkpoint_folder,
    checkpoint_training_seconds,
    parse_trainer_arguments,
    set_threads,
    trainer_argument_parser,
    usage_errors,
)

import h3_hf  # noqa: E402,F401  (registers the Auto classes)
from h3_hf import H3Config, H3ForCausalLM  # noqa: E402
from h3_hf.data.text_corpus import CORPUS_KINDS, load_stdlib_corpus  # noqa: E402
from h3_hf.model_card import ModelCardTrainer  # noqa: E402
from h3_hf.sharding import check_trainer_fsdp, shutdown_process_group  # noqa: E402

MODEL_TYPES = ("h3", "gpt2", "mamba")
END_OF_TEXT = "<|endoftext|>"
BUILTIN_CORPORA = {"stdlib": CORPUS_KINDS[0], "stdlib-docstrings": CORPUS_KINDS[1]}  # source, docstrings

# what this script uses where TrainingArguments' own defaults would not suit small CPU runs; flags given win
SCRIPT_DEFAULTS = dict(learning_rate=2e-3, weight_decay=0.1, per_device_train_batch_size=16,
                       per_device_eval_batch_size=16, lr_scheduler_type="cosine", warmup_steps=0.05, max_steps=400,
                       eval_strategy="steps", eval_steps=100, logging_steps=20, save_strategy="no", report_to="none",
                       dataloader_num_workers=0, dataloader_pin_memory=False, max_grad_norm=1.0)
TRAINER_OPTIONS = {
    "output_dir": "folder of the model, tokenizer, results.json and loss_curve.png",
    "seed": "seed of the model's initialisation and the batch order",
    "learning_rate": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "max_steps": "optimizer steps (training tokens = steps x batch x processes x --block_size)",
    "per_device_train_batch_size": "training batch size (per process)",
    "per_device_eval_batch_size": "evaluation batch size (per process)",
    "lr_scheduler_type": "learning-rate schedule after the warm-up: cosine, linear, constant, ...",
    "warmup_steps": "warm-up steps; below 1, a fraction of all steps",
    "eval_steps": "steps between validation losses",
    "logging_steps": "steps between logged training losses",
    "save_strategy": "when checkpoints are saved (steps: every --save_steps, for --resume_from_checkpoint)",
    "resume_from_checkpoint": "continue the run saved in this checkpoint-N folder",
    "bf16": "bfloat16 mixed precision (the SSM math stays float32)",
    "report_to": "experiment trackers (none, tensorboard, wandb, ...)",
    "push_to_hub": "upload the model, tokenizer and card when done",
}


@dataclass
class ModelArguments:
    _argument_group_name = "model"
    model_type: str = field(default="h3", metadata={"help": "architecture trained from scratch",
                                                    "choices": list(MODEL_TYPES)})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "continue from this saved or converted checkpoint instead (its tokenizer is used unless "
                "--tokenizer_name is given)"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "number of blocks"})
    attn_layer_idx: list[int] = field(default_factory=list, metadata={
        "help": "H3: layers whose mixer is attention, e.g. --attn_layer_idx 1 (default: none, a pure H3)"})
    state_size: int = field(default=64, metadata={"help": "H3: state size of the SSMs"})
    num_attention_heads: int = field(default=4, metadata={"help": "attention heads (H3 attention layers, GPT-2)"})


@dataclass
class DataArguments:
    _argument_group_name = "data and tokenizer"
    train_file: list[str] | None = field(default=None, metadata={"help": "plain-text training file(s)"})
    validation_file: list[str] | None = field(default=None, metadata={"help": "plain-text validation file(s)"})
    dataset_name: str | None = field(default=None, metadata={
        "help": "a saved datasets folder with a 'text' column and train/validation splits, or 'stdlib' / "
                "'stdlib-docstrings' (this interpreter's standard library)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "a saved tokenizer folder to use"})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": "size of the BPE tokenizer trained on the "
                                                                      "training texts when none is given"})
    block_size: int = field(default=128, metadata={"help": "tokens per training and evaluation block"})


class ElapsedTime(TrainerCallback):
    """Adds ``elapsed_seconds`` (training time since the start, evaluation included) to every log entry, so the
    loss can be plotted against wall time."""

    def __init__(self):
        self.start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.log_history:
            state.log_history[-1]["elapsed_seconds"] = round(time.monotonic() - self.start, 3)


def fail(message: str):
    """One line on stderr and exit code 2 (bad arguments)."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(model_args: ModelArguments, data_args: DataArguments):
    has_files = bool(data_args.train_file)
    if has_files == (data_args.dataset_name is not None):
        fail("give either --train_file (with --validation_file) or --dataset_name")
    if has_files and not data_args.validation_file:
        fail("--train_file needs --validation_file (perplexity is measured on it)")
    for path in (data_args.train_file or []) + (data_args.validation_file or []):
        if not os.path.isfile(path):
            fail(f"--train_file/--validation_file {path}: no such file")
    for name in ("hidden_size", "num_hidden_layers", "block_size", "tokenizer_vocab_size", "state_size",
                 "num_attention_heads"):
        args = model_args if hasattr(model_args, name) else data_args
        if getattr(args, name) < 1:
            fail(f"--{name} must be a positive integer, got {getattr(args, name)}")
    bad = [i for i in model_args.attn_layer_idx if not 0 <= i < model_args.num_hidden_layers]
    if bad:
        fail(f"--attn_layer_idx {bad}: layers are 0..{model_args.num_hidden_layers - 1}")


def load_texts(data_args: DataArguments) -> DatasetDict:
    """DatasetDict with "train" and "validation" splits of a "text" column."""
    if data_args.train_file:
        data = load_dataset("text", data_files={"train": data_args.train_file,
                                                "validation": data_args.validation_file}, sample_by="document")
    elif data_args.dataset_name in BUILTIN_CORPORA:
        data = load_stdlib_corpus(BUILTIN_CORPORA[data_args.dataset_name])
    else:
        data = load_from_disk(data_args.dataset_name)
        if not isinstance(data, DatasetDict) or not {"train", "validation"} <= set(data):
            fail(f"--dataset_name {data_args.dataset_name}: expected a saved DatasetDict with train and validation "
                 f"splits, got {type(data).__name__} {list(data) if isinstance(data, DatasetDict) else ''}")
    if "text" not in data["train"].column_names:
        fail(f"the training data has no 'text' column (columns: {data['train'].column_names})")
    return DatasetDict({split: data[split].select_columns(["text"]) for split in ("train", "validation")})


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as GPT-2's) of ``vocab_size`` tokens trained on ``texts``; END_OF_TEXT is bos/eos/unk/pad."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def group_texts(data: DatasetDict, tokenizer, block_size: int) -> DatasetDict:
    """Tokenize every text (followed by eos), concatenate and cut into ``block_size`` blocks with labels."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] if eos is not None else x for x in ids]}

    def group(batch):
        stream = list(chain.from_iterable(batch["input_ids"]))
        n = len(stream) // block_size * block_size
        blocks = [stream[i:i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    tokenized = data.map(tokenize, batched=True, remove_columns=["text"], desc="tokenizing")
    grouped = tokenized.map(group, batched=True, batch_size=len(tokenized["train"]) or 1, desc="grouping")
    for split in ("train", "validation"):
        if len(grouped[split]) == 0:
            fail(f"the {split} text is shorter than one block of {block_size} tokens")
    return grouped


def build_model(args: ModelArguments, tokenizer, block_size: int):
    """A model of ``args.model_type`` from scratch, sized by the arguments, for ``tokenizer``'s vocabulary."""
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    if args.model_type == "h3":
        config = H3Config(vocab_size=vocab, pad_vocab_size_multiple=1, hidden_size=args.hidden_size,
                          num_hidden_layers=args.num_hidden_layers, attn_layer_idx=args.attn_layer_idx,
                          state_size=args.state_size, num_attention_heads=args.num_attention_heads,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
        return H3ForCausalLM(config)
    if args.model_type == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=max(1024, 16 * block_size), n_embd=args.hidden_size,
                            n_layer=args.num_hidden_layers, n_head=args.num_attention_heads, bos_token_id=eos,
                            eos_token_id=eos, pad_token_id=eos)
        return GPT2LMHeadModel(config)
    config = MambaConfig(vocab_size=vocab, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_mambapy=is_mambapy_available())
    return MambaForCausalLM(config)


def use_causal_lm_loss(model):
    """Tell transformers that ``model`` computes the shifted causal-LM loss. It infers that from the class name
    ("...ForCausalLM"); for others (GPT2LMHeadModel) the Trainer would count the unshifted labels when averaging the
    loss (``num_items_in_batch``), so training and evaluation losses would come out (L - 1) / L too low."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


@torch.no_grad()
def causal_lm_loss(model, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of ``blocks`` (n, length), in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in blocks.split(batch_size):
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].double()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def plot_losses(log_history: list[dict], path: str, title: str):
    """PNG: training and validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), marker="." if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = trainer_argument_parser(
        __doc__, (ModelArguments, DataArguments, ThreadArguments, TrainingArguments),
        usage="%(prog)s (--train_file F --validation_file F | --dataset_name NAME) [OPTION VALUE ...]",
        defaults=SCRIPT_DEFAULTS, trainer_options=TRAINER_OPTIONS)
    model_args, data_args, threads, training_args = parse_trainer_arguments(parser, argv)
    with usage_errors(parser):  # --fsdp shards only on accelerators: refuse it on CPU instead of running DDP
        check_trainer_fsdp(training_args)
    check_args(model_args, data_args)
    check_checkpoint_folder(parser, training_args.resume_from_checkpoint)
    set_threads(threads.threads)

    texts = load_texts(data_args)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
    else:
        tokenizer = train_tokenizer(texts["train"]["text"], data_args.tokenizer_vocab_size)
    with training_args.main_process_first(desc="tokenizing"):
        blocks = group_texts(texts, tokenizer, data_args.block_size)

    torch.manual_seed(training_args.seed)
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            fail(f"the tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path} only "
                 f"{model.get_input_embeddings().weight.shape[0]} embeddings")
    else:
        model = build_model(model_args, tokenizer, data_args.block_size)
    use_causal_lm_loss(model)
    seconds_before = checkpoint_training_seconds(training_args.resume_from_checkpoint)
    trainer_class = ModelCardTrainer if isinstance(model, H3ForCausalLM) else Trainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=blocks["train"],
                            eval_dataset=blocks["validation"], data_collator=default_data_collator,
                            processing_class=tokenizer, callbacks=[ElapsedTime(), TrainingClock(seconds_before)])
    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * \
        training_args.world_size
    results = {
        "model_type": model.config.model_type,
        "eval_loss": metrics["eval_loss"],
        "perplexity": math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf"),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": train_result.global_step * global_batch * data_args.block_size,
        # the whole run's training time: a resumed run adds the time recorded in its checkpoint
        "train_runtime": seconds_before + train_result.metrics["train_runtime"],
        "wall_time": time.time() - start,
        "global_step": train_result.global_step,
        "train_blocks": len(blocks["train"]),
        "validation_tokens": len(blocks["validation"]) * data_args.block_size,
        "vocab_size": len(tokenizer),
        "seed": training_args.seed,
        "dataset": data_args.dataset_name or "text files",
        "example_prompt": tokenizer.decode(blocks["validation"][0]["input_ids"][:8]),
        "data_args": asdict(data_args),
        "model_args": asdict(model_args),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        plot_losses(trainer.state.log_history, os.path.join(training_args.output_dir, "loss_curve.png"),
                    f"{results['model_type']}, {results['num_parameters'] / 1e6:.2f}M parameters: validation "
                    f"perplexity {results['perplexity']:.1f}")
        print(f"validation perplexity {results['perplexity']:.2f} (loss {results['eval_loss']:.4f}), "
              f"{results['num_parameters']:,} parameters, {results['train_tokens']:,} training tokens, "
              f"{results['train_runtime']:.0f} s -> {training_args.output_dir}")
    if isinstance(trainer, ModelCardTrainer):
        trainer.save_with_card({k: v for k, v in results.items() if k != "log_history"})
    else:
        trainer.save_model(training_args.output_dir)
        if training_args.push_to_hub:
            trainer.push_to_hub()
    return results


if __name__ == "__main__":
    main()
    shutdown_process_group()  # under torchrun / accelerate launch; nothing to do in one process
