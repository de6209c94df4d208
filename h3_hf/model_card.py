"""Model cards for H3, S4D and S5 checkpoints, filled from a config and a training ``results.json``, and the
``Trainer`` that writes and uploads them.

The templates are ``h3_hf/model_cards/{h3,s4d,s5}.md`` (Jinja, rendered by ``huggingface_hub.ModelCard``). A card
lists only what applies to its run: the config fields the model uses, the settings of the dataset it was trained
on (not the flags of other datasets the training script also accepts) and the pipeline tag of its input type.
"""

import json
import os
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import Trainer

TEMPLATES = Path(__file__).parent / "model_cards"

# per model_type: tags and the config fields the card lists (those that are None are left out)
FAMILIES = {
    "h3": dict(tags=["h3", "state-space-model", "ssm", "custom_code"],
               fields=("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "mixer_type", "ssm_head_dim",
                       "attn_layer_idx", "num_attention_heads", "rotary_emb_dim")),
    "s4d": dict(tags=["s4d", "state-space-model", "ssm", "custom_code"],
                fields=("vocab_size", "input_size", "hidden_size", "num_hidden_layers", "state_size", "init",
                        "discretization", "bidirectional", "pooling", "num_labels")),
    "s5": dict(tags=["s5", "state-space-model", "ssm", "custom_code"],
               fields=("vocab_size", "input_size", "hidden_size", "num_hidden_layers", "state_size", "blocks",
                       "discretization", "bidirectional", "activation", "pooling", "num_labels")),
}
# H3 fields that only mean something when the model has attention layers
ATTENTION_FIELDS = ("attn_layer_idx", "num_attention_heads", "rotary_emb_dim")

# The datasets of scripts/train_synthetic.py and scripts/train_classifier.py: what the card says about each, and
# which of the run's data arguments configure it (train_classifier.py records the flags of every dataset).
DATASETS = {
    "induction_head": dict(description="the H3 paper's induction-head task: random tokens, a `=>` followed by the "
                                       "token to remember, and a final `=>` whose answer is that token"),
    "associative_recall": dict(description="the H3 paper's associative-recall task: key-value pairs, then `=>` and a "
                                           "key; the answer is its value"),
    "mqar": dict(description="multi-query associative recall (Zoology): key-value pairs, then each key queried "
                             "once later"),
    "digits": dict(description="scikit-learn's 8×8 digits read pixel by pixel, as real-valued sequences of "
                               "length 64",
                   settings=(), length=64),
    "digits_irregular": dict(description="the sequential digits with a random fraction of each image's pixels "
                                         "removed; the gaps between the kept pixels are the `timesteps`",
                             settings=("drop_fraction", "use_timesteps")),
    "listops": dict(description="ListOps expressions from the Long Range Arena generator",
                    settings=("listops_train_size", "listops_test_size", "listops_min_length",
                              "listops_max_length", "data_seed_listops")),
}
# Run arguments (results["args"] of train_synthetic.py, results["model_args"] of train_classifier.py) that the
# card reports under training when they are set.
RUN_SETTINGS = ("loss_on", "ssm_lr", "target_accuracy", "init_from", "dropout")
# Tokens a model must generate to answer one prompt of each synthetic task.
ANSWER_TOKENS = {"induction_head": 1, "associative_recall": 1, "mqar": 1}


def pipeline_tag(config) -> str:
    """The Hub's ``pipeline_tag`` for a model of this config.

    H3 reads token ids and generates text: ``text-generation``. A classifier on token ids (``vocab_size`` set) is
    ``text-classification``. A classifier on real-valued sequences (``input_size`` set, e.g. pixels) is ``other``:
    the Hub has no task for classifying real-valued sequences (its tabular, image and time-series tasks each
    imply an input format these models do not take), and a card without a tag lets the Hub guess the task from
    the architecture name ``*ForSequenceClassification``, i.e. show a text-classification widget that cannot work.
    """
    if config.model_type == "h3":
        return "text-generation"
    return "other" if getattr(config, "input_size", None) else "text-classification"


def generation_defaults(results: dict | None) -> dict:
    """``generation_config`` values for a model trained on ``results["task"]`` (a synthetic task): greedy decoding
    of as many tokens as one answer has, so ``pipeline("text-generation", model=DIR)(prompt)`` answers the prompt
    instead of sampling the pipeline's default 256 tokens. Empty for any other run."""
    answer = ANSWER_TOKENS.get((results or {}).get("task"))
    return {} if answer is None else {"max_new_tokens": answer, "do_sample": False}


def _dataset_name(results: dict) -> str | None:
    return results.get("task") or results.get("dataset")


def _scalar(value) -> bool:
    return value is not None and not isinstance(value, (dict, list, tuple))


def _config_rows(config) -> list[tuple[str, object]]:
    family = FAMILIES[config.model_type]
    fields = family["fields"]
    if config.model_type == "h3" and not getattr(config, "attn_layer_idx", None):
        fields = [name for name in fields if name not in ATTENTION_FIELDS]
    rows = [(name, getattr(config, name, None)) for name in fields]
    return [(name, value) for name, value in rows if value is not None]


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


def _data_settings(results: dict) -> dict:
    """The settings of the run's own dataset: the synthetic task's parameters, or the classifier data arguments
    that configure the dataset used (none of the flags that belong to the script's other datasets)."""
    name = _dataset_name(results)
    if results.get("task_params"):
        params = {k: v for k, v in results["task_params"].items() if _scalar(v) and k not in ("task", "split")}
        if "num_examples" in params:
            params["train_examples"] = params.pop("num_examples")
        return params
    data_args = results.get("data_args") or {}
    known = DATASETS.get(name, {}).get("settings")
    keys = known if known is not None else [k for k in data_args if k != "dataset"]
    params = {k: data_args[k] for k in keys if _scalar(data_args.get(k))}
    for key, label in (("train_size", "train_examples"), ("test_size", "test_examples")):
        if results.get(key) is not None:
            params[label] = results[key]
    return params


def _training_data(results: dict) -> str:
    name = _dataset_name(results)
    if name is None:
        return "Not recorded (the card was written without a results.json)."
    description = DATASETS.get(name, {}).get("description")
    text = f"`{name}`" + (f": {description}; built locally by `h3_hf.data`." if description else ".")
    settings = _data_settings(results)
    if settings:
        text += " Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "."
    run_args = {**(results.get("model_args") or {}), **(results.get("args") or {})}
    training = {**(results.get("training_args") or {}),
                **{k: run_args[k] for k in RUN_SETTINGS if _scalar(run_args.get(k))}}
    if training:
        text += "\n\nTrained with `transformers.Trainer`: " + ", ".join(f"{k}={v}" for k, v in training.items()) + "."
    return text


def _usage_code(config, results: dict, model_id: str, has_tokenizer: bool, prompt: str, remote: bool) -> str:
    """The card's usage code: with the package imported (``remote=False``) or with ``trust_remote_code=True``."""
    trust = ", trust_remote_code=True" if remote else ""
    repo = json.dumps(model_id)
    lines = [] if remote else [f"import h3_hf  # registers {config.model_type.upper()} with transformers' Auto classes"]
    if config.model_type == "h3":
        defaults = generation_defaults(results)
        if not remote:
            if defaults:
                call = f"generator({json.dumps(prompt)})"
                count = defaults["max_new_tokens"]
                note = f"greedy, {count} new token{'s' if count > 1 else ''}: the defaults in generation_config.json"
            else:
                call = f"generator({json.dumps(prompt)}, max_new_tokens=20, do_sample=False)"
                note = "the prompt and its continuation"
            return "\n".join(lines + ["from transformers import pipeline", "",
                                       f'generator = pipeline("text-generation", model={repo})',
                                       f"print({call})  # {note}"])
        new_tokens = defaults.get("max_new_tokens", 20)
        return "\n".join(lines + [
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"model = AutoModelForCausalLM.from_pretrained({repo}{trust})",
            f"tokenizer = AutoTokenizer.from_pretrained({repo}{trust})",
            f'inputs = tokenizer([{json.dumps(prompt)}], return_tensors="pt")',
            f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=False)",
            'print(tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:]))  # the new tokens'])
    imports = "AutoModelForSequenceClassification" + (", AutoTokenizer" if has_tokenizer else "")
    lines += [f"from transformers import {imports}", "",
              f"model = AutoModelForSequenceClassification.from_pretrained({repo}{trust})"]
    if has_tokenizer:
        lines += [f"tokenizer = AutoTokenizer.from_pretrained({repo}{trust})",
                  f'print(model(**tokenizer([{json.dumps(prompt)}], return_tensors="pt")).logits)']
    elif getattr(config, "input_size", None):
        name = _dataset_name(results)
        length = DATASETS.get(name, {}).get("length", 100)
        what = ": an 8x8 image, pixel by pixel" if name == "digits" else ""
        lines = ["import torch"] + lines
        lines.append(f"values = torch.rand(1, {length}, {config.input_size})  # (batch, length, input_size){what}")
        if name == "digits_irregular" and (results.get("data_args") or {}).get("use_timesteps", True):
            lines.append(f"gaps = torch.ones(1, {length})  # (batch, length): distance to the previous sample, > 0")
            lines.append("print(model(input_values=values, timesteps=gaps).logits)")
        else:
            lines.append("print(model(input_values=values).logits)")
    else:
        lines = ["import torch"] + lines
        lines.append(f"print(model(input_ids=torch.randint(0, {config.vocab_size}, (1, 100))).logits)")
    return "\n".join(lines)


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
    tag = pipeline_tag(config)
    eval_results = None
    if "eval_accuracy" in results and dataset is not None:
        eval_results = [EvalResult(task_type=tag, task_name="sequence classification" if tag == "other" else None,
                                   dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                                   metric_type="accuracy", metric_value=round(float(results["eval_accuracy"]), 4))]
    all_tags = list(dict.fromkeys([*family["tags"], *(tags or [])]))
    card_data = ModelCardData(library_name="transformers", pipeline_tag=tag, tags=all_tags,
                              license=license, datasets=[dataset] if dataset else None,
                              metrics=["accuracy"], model_name=model_name, eval_results=eval_results)
    prompt = (example_prompt or results.get("example_prompt") or "0 1 2 3").strip()
    usage = {f"usage_{kind}": _usage_code(config, results, model_id, has_tokenizer, prompt, remote=kind == "remote")
             for kind in ("installed", "remote")}
    extra = dict(attention_layers=list(config.attn_layer_idx)) if config.model_type == "h3" else dict(
        pooling=config.pooling)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / f"{config.model_type}.md"), model_name=model_name,
        model_id=model_id, config_rows=_config_rows(config), training_data=_training_data(results),
        results_table=_results_table(results), data_kind=f"`{dataset}`" if dataset else "small data",
        has_tokenizer=has_tokenizer, **usage, **extra)


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
        (written after ``results`` exist); otherwise save the model and write OUTPUT_DIR/README.md.

        A model trained on a synthetic task is saved with :func:`generation_defaults` in its generation config,
        so the text-generation pipeline's default call on the folder answers a prompt."""
        self.run_results = results
        model = self.accelerator.unwrap_model(self.model)
        defaults = generation_defaults(results)
        if defaults and getattr(model, "generation_config", None) is not None:
            model.generation_config.update(**defaults)
            model.generation_config._from_model_config = False  # set on purpose, not derived from config.json
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
