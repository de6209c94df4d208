"""A folder saved by scripts/train_synthetic.py, used the way a new user would, with and without h3_hf.

In a fresh interpreter:

- the tokenizer loads without a prompt: with ``import h3_hf``, or without the package through
  ``PreTrainedTokenizerFast`` or ``AutoTokenizer(..., trust_remote_code=True)``;
- without the package the model's loading error names the fix, and the folder's README.md (which that error points
  at) gives both fixes, with code that runs;
- ``pipeline("text-generation", model=DIR)(prompt)`` answers with one token after the prompt, greedily.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_synthetic  # noqa: E402

# Prepended to a script to make `import h3_hf` fail in that process, as on a machine without the package.
BLOCK_PACKAGE = textwrap.dedent("""
    import importlib.abc, sys

    class NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "h3_hf" or name.startswith("h3_hf."):
                raise ImportError("h3_hf is not installed here")

    sys.meta_path.insert(0, NoPackage())
""")
# Prepended to a script to record every interactive question transformers asks (and answer "n").
RECORD_PROMPTS = textwrap.dedent("""
    import builtins
    PROMPTS = []

    def _input(question=""):
        PROMPTS.append(question)
        return "n"

    builtins.input = _input
""")


def run_fresh(code: str, folder: Path, cwd: Path, *, package: bool) -> dict:
    """Run ``code`` in a new interpreter (``DIR`` = the saved folder) and return the JSON it prints last; with
    ``package`` the script starts with ``import h3_hf``, without it h3_hf cannot be imported."""
    script = (RECORD_PROMPTS + ("import h3_hf\n" if package else BLOCK_PACKAGE) + f"DIR = {str(folder)!r}\n"
              + textwrap.dedent(code))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A short associative-recall run, saved as the training script saves every run."""
    folder = tmp_path_factory.mktemp("saved") / "ar-h3"
    train_synthetic.main(["--task", "associative_recall", "--model", "h3", "--output_dir", str(folder),
                          "--num_train", "64", "--num_validation", "16", "--num_test", "16", "--max_steps", "3",
                          "--eval_steps", "3", "--per_device_train_batch_size", "16", "--log_level", "error"])
    return folder


def test_the_tokenizer_loads_without_a_prompt(run_folder, tmp_path):
    """(a) No question is asked by the documented ways of loading the tokenizer, and each decodes the same text."""
    check = """
        import json
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
        TEXT = "0 4 1 6 => 0"
        tokenizers = {LOADERS}
        print(json.dumps({"prompts": PROMPTS, "decoded": {name: tok.decode(tok(TEXT)["input_ids"])
                                                          for name, tok in tokenizers.items()}}))
    """
    with_package = run_fresh(check.replace(
        "{LOADERS}", '{"AutoTokenizer": AutoTokenizer.from_pretrained(DIR)}'), run_folder, tmp_path, package=True)
    without = run_fresh(check.replace("{LOADERS}", """{
            "PreTrainedTokenizerFast": PreTrainedTokenizerFast.from_pretrained(DIR),
            "AutoTokenizer, trust_remote_code": AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)}"""),
        run_folder, tmp_path, package=False)
    for result in (with_package, without):
        assert result["prompts"] == []
        assert set(result["decoded"].values()) == {" 0 4 1 6 => 0"}


def test_plain_auto_tokenizer_without_the_package_asks_then_loads(run_folder, tmp_path):
    """Pins transformers' behaviour that the README and the card describe: ``AutoTokenizer.from_pretrained(DIR)``
    without the package and without ``trust_remote_code`` reads config.json through ``AutoConfig``, whose
    ``auto_map`` (needed to load the model with remote code) makes it ask whether to run the folder's code; the
    answer "n" still gives the tokenizer. If this starts failing, transformers changed: update the docs."""
    result = run_fresh("""
        import json
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(DIR)
        print(json.dumps({"prompts": PROMPTS, "decoded": tok.decode(tok("0 4 => 0")["input_ids"])}))
    """, run_folder, tmp_path, package=False)
    assert len(result["prompts"]) == 1 and "trust_remote_code=True" in result["prompts"][0]
    assert result["decoded"] == " 0 4 => 0"


def test_without_the_package_the_error_and_the_folder_name_the_fix(run_folder, tmp_path):
    """(b) Non-interactively, transformers' error names trust_remote_code=True and the folder it points at; that
    folder's README.md names both fixes, and its no-package code runs where h3_hf cannot be imported."""
    result = run_fresh("""
        import json
        from transformers import pipeline
        try:
            pipeline("text-generation", model=DIR)
            error = None
        except ValueError as exc:
            error = str(exc)
        print(json.dumps({"error": error}))
    """, run_folder, tmp_path, package=False)
    assert result["error"] is not None
    assert "trust_remote_code=True" in result["error"] and str(run_folder) in result["error"]

    card = (run_folder / "README.md").read_text()
    assert "import h3_hf" in card and "trust_remote_code=True" in card and "contains custom code" in card
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    (remote,) = [block for block in blocks if "trust_remote_code=True" in block]
    card_id = re.search(r'from_pretrained\("([^"]+)"', remote).group(1)
    code = remote.replace(json.dumps(card_id), "DIR")
    printed = run_fresh(code + "\nimport json\nprint(json.dumps({'prompts': PROMPTS}))", run_folder, tmp_path,
                        package=False)
    assert printed["prompts"] == []


@pytest.mark.parametrize("package", [True, False], ids=["import h3_hf", "trust_remote_code"])
def test_default_text_generation_call_answers_the_prompt(run_folder, tmp_path, package):
    """(c) The pipeline's default call on the saved run: the prompt, a space and one greedily chosen token (the
    saved generation_config: max_new_tokens=1, do_sample=False), equal to generate()'s answer."""
    saved = json.loads((run_folder / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 1 and saved["do_sample"] is False
    prompt = json.loads((run_folder / "results.json").read_text())["example_prompt"].strip()
    trust = "" if package else ", trust_remote_code=True"
    result = run_fresh(f"""
        import json
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        PROMPT = {prompt!r}
        out = pipeline("text-generation", model=DIR{trust})(PROMPT)
        model = AutoModelForCausalLM.from_pretrained(DIR{trust})
        tok = AutoTokenizer.from_pretrained(DIR{trust})
        ids = tok(PROMPT, return_tensors="pt")["input_ids"]
        answer = tok.decode(model.generate(ids, max_new_tokens=1, do_sample=False)[0, -1:])
        print(json.dumps({{"out": out, "answer": answer, "vocab": list(tok.get_vocab()), "prompts": PROMPTS}}))
    """, run_folder, tmp_path, package=package)
    (generated,) = result["out"]
    assert result["prompts"] == []
    assert generated["generated_text"] == prompt + result["answer"]
    assert result["answer"].startswith(" ") and result["answer"].strip() in result["vocab"]
