"""`make demo`: train a small H3 on the H3 paper's associative-recall task, then answer test prompts with generate().

Example:
    python scripts/demo.py                                   # about two minutes on a 2-core CPU
    python scripts/demo.py --max_seconds 60 --seed 3 --output_dir runs/demo

The paper's 2-layer, width-32 H3 learns to recall the value of a key from a list of key-value pairs (vocabulary 10,
length 20) with transformers' Trainer (a progress bar shows the steps) and the recipe of scripts/train_synthetic.py
(the paper's loss on every position, AdamW 3e-3, cosine decay). Training stops when the validation accuracy
reaches --target_accuracy or when --max_seconds of training have passed, whichever comes first, so the demo ends in
about the same time on a busy machine (with a lower accuracy, which it reports). The model and tokenizer are saved,
reloaded with AutoModelForCausalLM / AutoTokenizer, scored on the test split and asked to complete test prompts with
model.generate() and pipeline("text-generation").
"""

import os
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    pipeline,
)
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_utils import ScriptArgumentParser, add_threads_argument, set_threads  # noqa: E402
from train_synthetic import (  # noqa: E402
    SyntheticArguments,
    build_model,
    build_optimizer,
    script_defaults,
    training_split,
)

import h3_hf  # noqa: E402,F401  (registers the Auto classes)
from h3_hf.data.synthetics import (  # noqa: E402
    answer_accuracy,
    load_synthetic,
    synthetic_parameters,
    synthetic_tokenizer,
)

TASK = "associative_recall"


class StopAtAccuracyOrTime(TrainerCallback):
    """Stops training once ``eval_accuracy`` reaches ``target`` or ``max_seconds`` of training have passed."""

    def __init__(self, target: float, max_seconds: float):
        self.target, self.max_seconds = target, max_seconds
        self.start = None
        self.stopped_by = "schedule"

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start >= self.max_seconds:
            self.stopped_by = "time"
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and metrics.get("eval_accuracy", 0.0) >= self.target:
            self.stopped_by = "target accuracy"
            control.should_training_stop = True


def parse_args(argv: list[str]):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--output_dir", default=None, help="where the model is saved (default: a new temporary "
                        "folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the model (default: 0)")
    target = SyntheticArguments.target_accuracy
    parser.add_argument("--target_accuracy", type=float, default=target, help="stop when the validation accuracy "
                        f"reaches it (default: {target}, train_synthetic.py's)")
    parser.add_argument("--max_seconds", type=float, default=150.0, help="stop training after this many seconds "
                        "(default: 150)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if not 0 < args.target_accuracy <= 1:
        parser.error(f"--target_accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.max_seconds <= 0:
        parser.error(f"--max_seconds must be > 0, got {args.max_seconds}")
    return args


def compute_metrics(eval_pred) -> dict:
    return {"accuracy": answer_accuracy(eval_pred.predictions, eval_pred.label_ids)}


def train(args, output_dir: str):
    """Trains and saves the model; returns (trainer, data, tokenizer, callback, seconds)."""
    data = load_synthetic(TASK, seed=args.seed)
    tokenizer = synthetic_tokenizer(synthetic_parameters(data)["vocab_size"])
    recipe = SyntheticArguments(task=TASK)  # train_synthetic.py's defaults: the paper's H3 and loss
    train_split = training_split(data, recipe.loss_on)
    torch.manual_seed(args.seed)
    model = build_model(recipe, len(tokenizer), tokenizer.pad_token_id)
    training_args = TrainingArguments(**{**script_defaults(TASK), "eval_steps": 100, "logging_steps": 100},
                                      output_dir=output_dir, seed=args.seed, use_cpu=True)
    stopper = StopAtAccuracyOrTime(args.target_accuracy, args.max_seconds)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_split, eval_dataset=data["validation"],
                      data_collator=default_data_collator, compute_metrics=compute_metrics,
                      preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
                      callbacks=[stopper], processing_class=tokenizer,
                      optimizers=(build_optimizer(model, recipe, training_args), None))
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    trainer.save_model(output_dir)
    return trainer, data, tokenizer, stopper, seconds


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    logging.set_verbosity_warning()
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="h3hf-demo-")
    print(f"Training H3 (2 layers, width 32) on associative recall, seed {args.seed}, {torch.get_num_threads()} "
          f"thread(s), at most {args.max_seconds:.0f} s -> {output_dir}", flush=True)
    trainer, data, tokenizer, stopper, seconds = train(args, output_dir)
    state = trainer.state
    accuracies = [h["eval_accuracy"] for h in state.log_history if "eval_accuracy" in h]
    last = f"; validation accuracy {accuracies[-1]:.1%}" if accuracies else ""
    print(f"Stopped by {stopper.stopped_by} after {state.global_step} steps ({seconds:.0f} s){last}", flush=True)

    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    test = data["test"]
    answer_positions = [next(i for i, label in enumerate(labels) if label != -100) for labels in test["labels"]]
    prompts = [ids[:pos] for ids, pos in zip(test["input_ids"], answer_positions)]
    answers = np.array([ids[pos] for ids, pos in zip(test["input_ids"], answer_positions)])
    with torch.no_grad():
        generated = model.generate(torch.tensor(prompts), max_new_tokens=1, do_sample=False)[:, -1].numpy()
    chance = 1 / len(np.unique(answers))
    print(f"\nReloaded with AutoModelForCausalLM; model.generate() answers {np.mean(generated == answers):.1%} of the "
          f"{len(answers)} test prompts (chance: {chance:.0%}). The first five:")
    for prompt, answer, guess in list(zip(prompts, answers, generated))[:5]:
        verdict = "ok" if guess == answer else f"WRONG, expected {tokenizer.decode([answer]).strip()}"
        print(f"  {tokenizer.decode(prompt).strip()}  ->  {tokenizer.decode([guess]).strip()}   ({verdict})")
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = tokenizer.decode(prompts[0]).strip()
    out = generator(text, max_new_tokens=1, do_sample=False, return_full_text=False)
    print(f"\npipeline('text-generation')({text!r}) -> {out[0]['generated_text'].strip()!r}")


if __name__ == "__main__":
    main()
