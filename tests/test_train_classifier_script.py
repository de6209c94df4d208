"""The training script end to end: a small S4D learns sequential digits; ListOps runs and reports."""

import functools
import json
import os
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import train_classifier  # noqa: E402


def test_small_s4d_learns_sequential_digits(tmp_path):
    results = train_classifier.main([
        "--model", "s4d", "--dataset", "digits", "--output_dir", str(tmp_path), "--hidden_size", "32",
        "--num_hidden_layers", "2", "--state_size", "32", "--num_train_epochs", "20", "--disable_tqdm", "true",
        "--seed", "0", "--eval_strategy", "no"])
    # a model without working sequence mixing stays below 30% (spec); random is 10%
    assert results["eval_accuracy"] >= 0.93
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["eval_accuracy"] == results["eval_accuracy"] and "train_runtime" in saved and "config" in saved
    assert (tmp_path / "kernels_layer0.png").stat().st_size > 1000
    assert (tmp_path / "model.safetensors").exists()


def test_listops_script_runs_with_padding_and_reports(tmp_path):
    results = train_classifier.main([
        "--model", "s4d", "--dataset", "listops", "--output_dir", str(tmp_path), "--hidden_size", "16",
        "--num_hidden_layers", "1", "--state_size", "8", "--num_train_epochs", "1", "--disable_tqdm", "true",
        "--listops_train_size", "64", "--listops_test_size", "32", "--listops_min_length", "10",
        "--listops_max_length", "60"])
    assert results["config"]["bidirectional"] is True  # the ListOps defaults were applied
    assert 0 <= results["eval_accuracy"] <= 1 and results["test_size"] == 32

    # the output folder is a checkpoint with its tokenizer and card: the text-classification pipeline
    # reproduces the model's prediction on a ListOps expression, and the card's usage text is ListOps
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = results["example_prompt"]
    (prediction,) = pipeline("text-classification", model=str(tmp_path))([text])
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
    assert prediction["label"] == model.config.id2label[int(logits.argmax())]
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["listops"] and text in card.text


def test_small_s5_learns_sequential_digits(tmp_path):
    results = train_classifier.main([
        "--model", "s5", "--dataset", "digits", "--output_dir", str(tmp_path), "--hidden_size", "32",
        "--num_hidden_layers", "2", "--state_size", "32", "--blocks", "2", "--num_train_epochs", "20",
        "--learning_rate", "1e-2", "--ssm_lr", "3e-3", "--disable_tqdm", "true", "--seed", "0",
        "--eval_strategy", "no"])
    assert results["eval_accuracy"] >= 0.92  # measured 0.96-0.975 (spec); no sequence mixing stays < 0.3
    assert results["config"]["model_type"] == "s5" and results["training_args"]["weight_decay"] == 0.05
    assert (tmp_path / "kernels_layer0.png").stat().st_size > 1000


def test_irregular_digits_pass_timesteps_to_s5(tmp_path, monkeypatch, capsys):
    from h3_hf import S5ForSequenceClassification

    seen = []
    original = S5ForSequenceClassification.forward

    @functools.wraps(original)  # keeps the signature: Trainer drops dataset columns forward() does not name
    def spy(self, *args, timesteps=None, **kwargs):
        seen.append(None if timesteps is None else tuple(timesteps.shape))
        return original(self, *args, timesteps=timesteps, **kwargs)

    monkeypatch.setattr(S5ForSequenceClassification, "forward", spy)
    common = ["--model", "s5", "--dataset", "digits_irregular", "--hidden_size", "8", "--num_hidden_layers", "1",
              "--state_size", "8", "--blocks", "2", "--num_train_epochs", "1", "--disable_tqdm", "true",
              "--max_steps", "2", "--eval_strategy", "no"]
    train_classifier.main(common + ["--output_dir", str(tmp_path / "with")])
    assert seen[0] == (32, 45)  # 30% of 64 pixels dropped, gaps given per position
    seen.clear()
    train_classifier.main(common + ["--output_dir", str(tmp_path / "without"), "--use_timesteps", "false"])
    assert seen and all(s is None for s in seen)
    with pytest.raises(SystemExit) as exit_info:
        train_classifier.main(["--model", "s4d", "--dataset", "digits_irregular", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "needs --model s5" in capsys.readouterr().err
