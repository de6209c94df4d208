"""Model cards for H3, S4D and S5 checkpoints, filled from a config and a training ``results.json``, and the
``Trainer`` that writes and uploads them.

The templates are ``h3_hf/model_cards/{h3,s4d,s5}.md`` (Jinja, rendered by ``huggingface_hub.ModelCard``).
"""

import json
import os
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import Trainer

TEMPLATES = Path(__file__).parent / "model_cards"

# per model_type: pipeline tag, tags, the config fields the card lists
FAMILIES = {
    "h3": dict(pipeline_tag="text-generation", tags=["h3", "state-space-model", "ssm", "custom_code"],
               fields=("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "num_attention_heads",
                       "attn_layer_idx", "mixer_type", "ssm_head_dim")),
    "s4d": dict(pipeline_tag="text-classification", tags=["s4d", "state-space-model", "ssm", "custom_code"],
                fields=("vocab_size", "input_size", "hidden_size", "num_hidden_layers", "state_size", "init",
                        "discretization", "bidirectional", "pooling", "num_labels")),
    "s5": dict(pipeline_tag="text-classification", tags=["s5", "state-space-model", "ssm", "custom_code"],
               fields=("vocab_size", "input_size", "hidden_size", "num_hidden_layers", "state_size", "blocks",
                       "discretization", "bidirectional", "activation", "pooling", "num_labels")),
}


def _dataset_name(results: dict) -> str | None:
    return results.get("task") or results.get("dataset")


def _results_table(results: dict) -> str:
    if "eval_accuracy" not in results:
        return "No evaluation was recorded with this checkpoint."
    rows = [("test accuracy", f"{results['eval_accuracy']:.1%}")]
    for key, label in (("validation_accuracy", "validation accuracy"), ("random_baseline", "random guessing"),
                       ("majority_class_accuracy", "majority class"), ("global_step", "training steps"),
                       ("train_runtime", "training time (s)"), ("num_parameters", "parameters"), ("seed", "seed")):
        if results.get(key) is not None:
            value = results[key]
            if key in ("validation_accuracy", "random_baseline", "majority_class_accuracy"):
                value = f"{value:.1%}"
            elif key == "train_runtime":
                value = f"{value:.0f}"
            rows.append((label, value))
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _training_data(results: dict) -> str:
    name = _dataset_name(results)
    if name is None:
        return "Not recorded (the card was written without a results.json)."
    params = results.get("task_params") or results.get("data_args") or {}
    listed = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (dict, list)))
    text = f"`{name}`, generated locally by `h3_hf.data`"
    return text + (f" ({listed})." if listed else ".") + (
        f" Trained with `transformers.Trainer`: {json.dumps(results['training_args'])}."
        if "training_args" in results else "")


def build_model_card(config, results: dict | None = None, *, model_id: str | None = None,
                     license: str = "apache-2.0", tags: list[str] | None = None, has_tokenizer: bool = True,
                     example_prompt: str | None = None) -> ModelCard:
    """Fill the template of ``config.model_type`` (h3, s4d or s5).

    Args:
        config: the model's configuration (any object with ``model_type`` and the listed fields).
        results: a training ``results.json`` dict (``eval_accuracy``, ``task`` or ``dataset``, ...); optional.
        model_id: the Hub id shown in the usage code (default ``"your-username/<model_type>-<dataset>"``).
        license: license id for the metadata (the Hub's identifiers, e.g. ``apache-2.0``).
        tags: extra tags, added after the family's.
        has_tokenizer: whether a tokenizer is saved with the model (classifiers on real-valued inputs have none).
        example_prompt: the input text of the usage code (default ``results["example_prompt"]``, else
            ``"0 1 2 3"``); it must be text the saved tokenizer can encode.
    """
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(f"config.model_type must be one of {sorted(FAMILIES)}, got {config.model_type!r}")
    results = results or {}
    dataset = _dataset_name(results)
    model_id = model_id or f"your-username/{config.model_type}-{dataset or 'model'}"
    model_name = model_id.split("/")[-1]
    eval_results = None
    if "eval_accuracy" in results and dataset is not None:
        eval_results = [EvalResult(task_type=family["pipeline_tag"], dataset_type=dataset, dataset_name=dataset,
                                   dataset_split="test", metric_type="accuracy",
                                   metric_value=round(float(results["eval_accuracy"]), 4))]
    all_tags = list(dict.fromkeys([*family["tags"], *(tags or [])]))
    card_data = ModelCardData(library_name="transformers", pipeline_tag=family["pipeline_tag"], tags=all_tags,
                              license=license, datasets=[dataset] if dataset else None,
                              metrics=["accuracy"], model_name=model_name, eval_results=eval_results)
    values = {name: getattr(config, name, None) for name in family["fields"]}
    config_rows = [(name, value) for name, value in values.items() if value is not None]
    prompt = example_prompt or results.get("example_prompt") or "0 1 2 3"
    if config.model_type == "h3":
        extra = dict(attention_layers=list(config.attn_layer_idx), example_prompt=prompt)
    else:
        if has_tokenizer:
            usage = ("from transformers import AutoTokenizer\n\n"
                     f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(model_id)})\n"
                     f'print(model(**tokenizer([{json.dumps(prompt)}], return_tensors="pt")).logits)')
        elif getattr(config, "input_size", None):
            usage = ("import torch\n\n# real-valued inputs: (batch, length, input_size)\n"
                     f"print(model(input_values=torch.randn(1, 100, {config.input_size})).logits)")
        else:
            usage = ("import torch\n\n# token ids: (batch, length)\n"
                     f"print(model(input_ids=torch.randint(0, {config.vocab_size}, (1, 100))).logits)")
        extra = dict(pooling=config.pooling, usage_inputs=usage, has_tokenizer=has_tokenizer)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / f"{config.model_type}.md"), model_name=model_name,
        model_id=model_id, config_rows=config_rows, training_data=_training_data(results),
        results_table=_results_table(results), data_kind=f"`{dataset}`" if dataset else "small data", **extra)


def write_model_card(output_dir: str, config, results: dict | None = None, **kwargs) -> str:
    """Write ``output_dir/README.md`` (see ``build_model_card``) and return its path."""
    path = os.path.join(output_dir, "README.md")
    build_model_card(config, results, **kwargs).save(path)
    return path


class ModelCardTrainer(Trainer):
    """``Trainer`` whose model card is the h3-hf one, not transformers' generic training summary.

    Set ``run_results`` (the run's results.json dict) before ``push_to_hub`` / ``create_model_card`` so the card
    reports the evaluation. ``create_model_card`` writes OUTPUT_DIR/README.md from the model's config and those
    results; ``push_to_hub`` (which calls it) therefore uploads that card. Mid-training pushes
    (``hub_strategy="every_save"``) also upload the checkpoint's code files, so the repo is loadable with
    ``trust_remote_code`` at every commit.
    """

    run_results: dict | None = None

    def create_model_card(self, license: str | None = None, tags: str | list[str] | None = None, **kwargs) -> None:
        """Write OUTPUT_DIR/README.md; ``license`` and ``tags`` go into the metadata, other arguments of the
        stock method (model_name, language, datasets, ...) are not used by the h3-hf card."""
        if not self.is_world_process_zero():
            return
        tags = [tags] if isinstance(tags, str) else tags
        write_model_card(self.args.output_dir, self.accelerator.unwrap_model(self.model).config, self.run_results,
                         model_id=self.hub_model_id, license=license or "apache-2.0", tags=tags,
                         has_tokenizer=self.processing_class is not None)

    def save_with_card(self, results: dict | None) -> None:
        """End of a run: with ``push_to_hub`` set, one upload of the model, its code, the tokenizer and the card
        (written after ``results`` exist); otherwise save the model and write OUTPUT_DIR/README.md."""
        self.run_results = results
        if self.args.push_to_hub:
            self.push_to_hub()
        else:
            self.save_model(self.args.output_dir)  # on the main process only
            self.create_model_card()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # the stock method copies only config and weights from the checkpoint into OUTPUT_DIR before uploading it
        if self.is_world_process_zero():
            for code_file in Path(checkpoint_folder).glob("*.py"):
                shutil.copy(code_file, self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)
