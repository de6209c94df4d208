"""scripts/train_lm.py end to end on a tiny corpus.

Tokenizer training, grouping into blocks, results, resume, reload + generate, the other model types, fine-tuning a
converted checkpoint, and one-line errors.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from h3_hf.data.text_corpus import is_validation_file, load_stdlib_corpus, module_docstrings
from h3_hf.data.tokenization import build_word_level_tokenizer

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import train_lm  # noqa: E402

TINY = ["--hidden_size", "16", "--num_hidden_layers", "2", "--state_size", "8", "--num_attention_heads", "2",
        "--block_size", "32", "--tokenizer_vocab_size", "300", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--eval_steps", "3", "--logging_steps", "1", "--seed", "1",
        "--disable_tqdm", "true", "--log_level", "error"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Two small text files cut from the standard library's docstrings."""
    folder = tmp_path_factory.mktemp("corpus")
    data = load_stdlib_corpus("docstrings")
    train, validation = folder / "train.txt", folder / "validation.txt"
    train.write_text("\n\n".join(data["train"]["text"])[:12000])
    validation.write_text("\n\n".join(data["validation"]["text"])[:3000])
    return train, validation


def run(corpus, output_dir, *flags):
    train, validation = corpus
    return train_lm.main(["--train_file", str(train), "--validation_file", str(validation), "--output_dir",
                          str(output_dir), *TINY, *flags])


def test_trains_a_tokenizer_groups_blocks_and_writes_results(corpus, tmp_path):
    results = run(corpus, tmp_path, "--model_type", "h3", "--attn_layer_idx", "1", "--max_steps", "6")
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("eval_loss", "perplexity", "num_parameters", "train_tokens", "train_runtime"):
        assert saved[key] == results[key]
    assert math.isclose(saved["perplexity"], math.exp(saved["eval_loss"]))
    assert saved["train_tokens"] == 6 * 4 * 32
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 300
    # grouping: every text + end-of-text, concatenated, cut into whole blocks of 32
    text = corpus[0].read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips the text
    assert saved["train_blocks"] == (len(ids) + 1) // 32


def test_saved_folder_reloads_and_generates_with_a_pipeline(corpus, tmp_path):
    run(corpus, tmp_path, "--model_type", "h3", "--max_steps", "3")
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    out = pipeline("text-generation", model=model, tokenizer=tokenizer)("Return the", max_new_tokens=5,
                                                                         do_sample=False)
    assert out[0]["generated_text"].startswith("Return the") and len(out[0]["generated_text"]) > len("Return the")


@pytest.mark.parametrize("model_type", ["h3", "gpt2", "mamba"])
def test_reported_loss_is_the_mean_over_every_predicted_token(corpus, tmp_path, model_type):
    """The Trainer's eval_loss equals an explicit float64 cross-entropy over the validation blocks for every model
    type (for GPT2LMHeadModel transformers would divide by all labels, position 0 included, without
    use_causal_lm_loss)."""
    results = run(corpus, tmp_path, "--model_type", model_type, "--max_steps", "3")
    assert results["model_type"] == model_type
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(corpus[1].read_text(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[:len(ids) // 32 * 32]).view(-1, 32)
    logits = model.eval()(input_ids=blocks).logits[:, :-1].double()
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert results["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert train_lm.causal_lm_loss(model, blocks, batch_size=5) == pytest.approx(expected, rel=1e-9)


def test_mamba_trains_with_the_parallel_scan_and_matches_the_sequential_loop():
    """With mambapy installed (dev extra) train_lm's Mamba scans in parallel on CPU; its loss and gradients equal
    transformers' loop over positions (the path it takes otherwise)."""
    pytest.importorskip("mambapy")
    from argparse import Namespace

    tokenizer = build_word_level_tokenizer([f"w{i}" for i in range(40)], special_tokens={"eos_token": "<eos>"})
    args = Namespace(model_type="mamba", hidden_size=16, num_hidden_layers=2)
    parallel = train_lm.build_model(args, tokenizer, block_size=24).double()
    assert parallel.config.use_mambapy
    loop = type(parallel)(type(parallel.config)(**{**parallel.config.to_dict(), "use_mambapy": False})).double()
    loop.load_state_dict(parallel.state_dict())
    ids = torch.randint(0, len(tokenizer), (3, 24), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (parallel, loop):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=0)
    for (name, p), q in zip(parallel.named_parameters(), loop.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-12, msg=name)


def test_compare_lms_matches_sizes_and_writes_the_table(corpus, tmp_path):
    import compare_lms
    from datasets import Dataset, DatasetDict

    data = tmp_path / "data"
    DatasetDict({"train": Dataset.from_dict({"text": [corpus[0].read_text()]}),
                 "validation": Dataset.from_dict({"text": [corpus[1].read_text()]})}).save_to_disk(data)
    summary = compare_lms.main(["--output_dir", str(tmp_path / "out"), "--dataset_name", str(data),
                                "--target_parameters", "150000", "--num_hidden_layers", "2", "--block_size", "16",
                                "--max_steps", "2", "--batch_size", "4", "--seeds", "1", "2", "--eval_multiples", "1",
                                "4", "--tokenizer_vocab_size", "300", "--models", "h3-hybrid", "gpt2"])
    assert list(summary) == ["h3-hybrid", "gpt2"]
    for runs in summary.values():
        assert len(runs) == 2 and abs(runs[0]["num_parameters"] - 150000) <= 15000
        assert runs[0]["train_tokens"] == 2 * 4 * 16
        assert math.isclose(runs[0]["perplexity_at"]["16"], runs[0]["perplexity"], rel_tol=1e-4)
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| h3-hybrid |" in table and "ppl @ 64" in table and " ± " in table
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 0
    hybrid = json.loads((tmp_path / "out" / "h3-hybrid-seed1" / "config.json").read_text())
    assert hybrid["attn_layer_idx"] == [0, 1]


def test_compare_lms_reuses_a_run_finished_with_the_same_flags(corpus, tmp_path, monkeypatch, capsys):
    import compare_lms
    from datasets import Dataset, DatasetDict

    data = tmp_path / "data"
    DatasetDict({"train": Dataset.from_dict({"text": [corpus[0].read_text()]}),
                 "validation": Dataset.from_dict({"text": [corpus[1].read_text()]})}).save_to_disk(data)
    argv = ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(data), "--target_parameters", "150000",
            "--num_hidden_layers", "2", "--block_size", "16", "--max_steps", "2", "--batch_size", "4", "--seeds", "1",
            "--eval_multiples", "1", "--tokenizer_vocab_size", "300", "--models", "gpt2"]
    first = compare_lms.main(argv)
    tokenizer_file = tmp_path / "out" / "tokenizer" / "tokenizer.json"
    saved_at = tokenizer_file.stat().st_mtime_ns
    trained = []
    real_main = train_lm.main
    monkeypatch.setattr(train_lm, "main", lambda flags: trained.append(flags) or real_main(flags))
    again = compare_lms.main(argv)
    assert not trained and "gpt2 seed 1: reusing the finished run" in capsys.readouterr().out
    assert tokenizer_file.stat().st_mtime_ns == saved_at  # the same tokenizer is not written again
    assert again["gpt2"][0]["eval_loss"] == first["gpt2"][0]["eval_loss"]
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)
    argv[1] = str(moved)
    assert compare_lms.main(argv)["gpt2"][0]["eval_loss"] == first["gpt2"][0]["eval_loss"] and not trained
    compare_lms.main([*argv, "--max_steps", "3"])  # other flags: trained again
    assert len(trained) == 1 and trained[0][trained[0].index("--max_steps") + 1] == "3"


def test_resumed_run_ends_on_the_uninterrupted_runs_weights(corpus, tmp_path):
    full = tmp_path / "full"
    run(corpus, full, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3")
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full / "checkpoint-3", interrupted / "checkpoint-3")
    results = run(corpus, interrupted, "--max_steps", "6", "--resume_from_checkpoint",
                  str(interrupted / "checkpoint-3"))
    assert results["global_step"] == 6
    expected, resumed = load_file(str(full / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_fine_tunes_a_converted_official_checkpoint(corpus, tmp_path):
    import convert_h3_original_checkpoint
    from test_h3_converter import HEADS, official_state_dict

    torch.save(official_state_dict(), tmp_path / "model.pt")
    converted = tmp_path / "converted"
    convert_h3_original_checkpoint.main(["--checkpoint", str(tmp_path / "model.pt"), "--output", str(converted),
                                         "--num-attention-heads", str(HEADS)])
    before = load_file(str(converted / "model.safetensors"))
    vocab = before["backbone.embeddings.weight"].shape[0]
    # a character-level tokenizer that fits the converted vocabulary (other characters map to <unk>)
    tokenizer = build_word_level_tokenizer(list("etaoinsrhld "), split_chars=True)
    assert len(tokenizer) <= vocab
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    results = run(corpus, tmp_path / "ft", "--model_name_or_path", str(converted), "--tokenizer_name",
                  str(tmp_path / "tokenizer"), "--max_steps", "2", "--learning_rate", "1e-3")
    assert results["global_step"] == 2 and math.isfinite(results["eval_loss"])
    after = load_file(str(tmp_path / "ft" / "model.safetensors"))
    assert not torch.equal(after["backbone.layers.0.mixer.q_proj.weight"],
                           before["backbone.layers.0.mixer.q_proj.weight"])


def test_stdlib_corpus_split_is_fixed_by_file_name():
    data = load_stdlib_corpus("docstrings")
    assert set(data["validation"]["file"]).isdisjoint(data["train"]["file"])
    assert all(is_validation_file(name) for name in data["validation"]["file"])
    assert not any(is_validation_file(name) for name in data["train"]["file"])
    assert load_stdlib_corpus("docstrings")["validation"]["text"] == data["validation"]["text"]
    assert module_docstrings('"""Module."""\ndef f():\n    """Function."""\n') == "Module.\n\nFunction."


@pytest.mark.parametrize("flags, message", [
    ([], "give either --train_file"),
    (["--dataset_name", "stdlib", "--model_type", "rwkv"], "invalid choice: 'rwkv'"),
    (["--train_file", "missing.txt", "--validation_file", "missing.txt"], "missing.txt: no such file"),
    (["--dataset_name", "stdlib", "--attn_layer_idx", "7"], "--attn_layer_idx [7]"),
])
def test_bad_arguments_give_one_line(tmp_path, flags, message):
    result = subprocess.run([sys.executable, str(SCRIPTS / "train_lm.py"), "--output_dir", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)
