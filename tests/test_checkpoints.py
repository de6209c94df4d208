"""Self-contained checkpoints: remote code without the package, installed classes, shards, pipelines."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tiny_models
import torch
from safetensors.torch import load_file, save_file
from tiny_models import h3_hybrid_config, s4d_config, s5_config
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

from h3_hf import H3ForCausalLM, S4DForSequenceClassification, S5ForSequenceClassification
from h3_hf.data.tokenization import build_word_level_tokenizer

WORDS = [f"w{i}" for i in range(20)]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def build(kind: str):
    """A small random model of each family and a matching word-level tokenizer, in eval mode."""
    if kind == "h3":
        tokenizer = build_word_level_tokenizer(WORDS)
        config = h3_hybrid_config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=4, embedding_dropout=0.1, pad_vocab_size_multiple=8,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        return tiny_models.build(H3ForCausalLM, config), tokenizer
    tokenizer = build_word_level_tokenizer(WORDS, padding_side="right")
    common = dict(vocab_size=len(tokenizer), id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                  pad_token_id=tokenizer.pad_token_id, dropout=0.1)
    if kind == "s4d":
        return tiny_models.build(S4DForSequenceClassification, s4d_config(**common)), tokenizer
    return tiny_models.build(S5ForSequenceClassification, s5_config(**common)), tokenizer


def inputs(tokenizer) -> dict:
    texts = ["w1 w2 w3 w4 w5 w6", "w7 w8 w9"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def reference_outputs(model, tokenizer) -> dict[str, torch.Tensor]:
    """What the saving process computes: logits or hidden states, greedy and beam tokens for H3."""
    batch = inputs(tokenizer)
    with torch.no_grad():
        out = {"logits": model(**batch).logits, "hidden": model.base_model(**batch).last_hidden_state}
        if isinstance(model, H3ForCausalLM):
            out["greedy"] = model.generate(**batch, max_new_tokens=6, do_sample=False)
            out["beam"] = model.generate(**batch, max_new_tokens=6, num_beams=3, do_sample=False)
    return out


# Runs in a fresh interpreter in which importing h3_hf raises ImportError; only transformers is used.
REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.abc, importlib.util, json, sys

    class NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "h3_hf" or name.startswith("h3_hf."):
                raise ImportError("h3_hf is not importable in this process")

    sys.meta_path.insert(0, NoPackage())
    try:
        import h3_hf  # noqa: F401
        raise SystemExit("h3_hf was importable")
    except ImportError:
        pass

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

    folder, kind, out_path = sys.argv[1:4]
    batch = load_file(folder + "/inputs.safetensors")
    head_class = AutoModelForCausalLM if kind == "h3" else AutoModelForSequenceClassification
    model = head_class.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    out = {}
    with torch.no_grad():
        out["logits"] = model(**batch).logits
        out["hidden"] = base(**batch).last_hidden_state
        if kind == "h3":
            out["greedy"] = model.generate(**batch, max_new_tokens=6, do_sample=False)
            out["beam"] = model.generate(**batch, max_new_tokens=6, num_beams=3, do_sample=False)
    task = "text-generation" if kind == "h3" else "text-classification"
    pipe = pipeline(task, model=folder, trust_remote_code=True)
    kwargs = dict(max_new_tokens=4, do_sample=False) if kind == "h3" else {}
    save_file({k: v.contiguous() for k, v in out.items()}, out_path)
    print(json.dumps({"classes": [type(model).__module__ + "." + type(model).__name__,
                                  type(base).__module__ + "." + type(base).__name__],
                      "pipeline": pipe(["w1 w2 w3", "w4 w5"], **kwargs)}))
""")


def run_without_package(folder: str, kind: str, tmp_path) -> tuple[dict, dict]:
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(script), folder, kind, str(tmp_path / "out.safetensors")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(tmp_path / "out.safetensors")), json.loads(result.stdout.strip().splitlines()[-1])


def local_pipeline_output(folder: str, kind: str):
    if kind == "h3":
        return pipeline("text-generation", model=folder)(["w1 w2 w3", "w4 w5"], max_new_tokens=4, do_sample=False)
    return pipeline("text-classification", model=folder)(["w1 w2 w3", "w4 w5"])


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
def test_checkpoint_loads_through_remote_code_without_the_package(kind, tmp_path):
    model, tokenizer = build(kind)
    folder = str(tmp_path / "checkpoint")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in inputs(tokenizer).items()}, os.path.join(folder, "inputs.safetensors"))

    files = set(os.listdir(folder))
    assert {f"modeling_{kind}.py", f"configuration_{kind}.py", "precision.py", "hub_utils.py", "validation.py",
            "model.safetensors", "config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
    head = "AutoModelForCausalLM" if kind == "h3" else "AutoModelForSequenceClassification"
    assert set(auto_map) == {"AutoConfig", "AutoModel", head}

    remote, info = run_without_package(folder, kind, tmp_path)
    assert all(name.startswith("transformers_modules.") for name in info["classes"])
    expected = reference_outputs(model, tokenizer)
    for key, value in expected.items():
        torch.testing.assert_close(remote[key], value, rtol=0, atol=1e-6, msg=key)
    assert info["pipeline"] == json.loads(json.dumps(local_pipeline_output(folder, kind)))


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
def test_installed_classes_load_the_same_folder_without_remote_code(kind, tmp_path):
    model, tokenizer = build(kind)
    model.save_pretrained(tmp_path)
    head_class = AutoModelForCausalLM if kind == "h3" else AutoModelForSequenceClassification
    loaded = head_class.from_pretrained(tmp_path).eval()
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and type(loaded).__module__.startswith("h3_hf.")
    assert type(base) is type(model.base_model)
    batch = inputs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
def test_sharded_checkpoint_loads_exactly(kind, tmp_path):
    model, tokenizer = build(kind)
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(tmp_path, max_shard_size=total_bytes // 3)
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) >= 2 and (tmp_path / "model.safetensors.index.json").exists()
    head_class = AutoModelForCausalLM if kind == "h3" else AutoModelForSequenceClassification
    loaded = head_class.from_pretrained(tmp_path).eval()
    reference, reloaded = model.state_dict(), loaded.state_dict()
    assert reference.keys() == reloaded.keys()
    for name, value in reference.items():
        assert torch.equal(reloaded[name], value), name


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_text_classification_pipeline_matches_the_model(kind, tmp_path):
    model, tokenizer = build(kind)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = ["w1 w2 w3 w4", "w5 w6"]
    predictions = pipeline("text-classification", model=str(tmp_path), top_k=None)(texts)
    for text, prediction in zip(texts, predictions):
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        scores = {p["label"]: p["score"] for p in prediction}
        assert set(scores) == set(LABELS.values())
        for i, label in LABELS.items():
            assert scores[label] == pytest.approx(probs[i].item(), abs=1e-6)


def test_text_generation_pipeline_continues_like_generate(tmp_path):
    model, tokenizer = build("h3")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    out = generator("w1 w2 w3", max_new_tokens=5, do_sample=False, return_full_text=False)
    ids = tokenizer("w1 w2 w3", return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=5, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert out[0]["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)
