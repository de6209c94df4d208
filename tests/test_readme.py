"""Every ```python block of README.md and docs/*.md runs as written, each in a fresh interpreter.

Each block runs verbatim in its own subprocess, offline (HF_HUB_OFFLINE=1), with a temporary working directory
and Hugging Face cache. Shell commands (```bash blocks) are not run; the one folder a README snippet reads that a
shell command makes, the training run ``runs/ar-h3`` of ``scripts/train_synthetic.py``, is made by a short run of
that script in the working directory first.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECONDS_PER_SNIPPET = 60  # each takes well under 20 s on 2 cores; the limit only catches a hang


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of a Markdown file."""
    text = path.read_text()
    return [(text[:match.start()].count("\n") + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


SNIPPETS = [(path, line, code) for path in DOCUMENTS for line, code in python_blocks(path)]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A short ``scripts/train_synthetic.py`` run, as the README's command makes (minutes there, seconds here)."""
    folder = tmp_path_factory.mktemp("readme-run") / "ar-h3"
    command = [sys.executable, str(ROOT / "scripts" / "train_synthetic.py"), "--task", "associative_recall",
               "--model", "h3", "--output_dir", str(folder), "--num_train", "64", "--num_validation", "16",
               "--num_test", "16", "--max_steps", "2", "--eval_steps", "2", "--per_device_train_batch_size", "16",
               "--log_level", "error"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_readme_has_runnable_snippets_and_stays_user_documentation():
    readme = (ROOT / "README.md").read_text()
    assert len(python_blocks(ROOT / "README.md")) >= 4
    assert len(readme.splitlines()) <= 260
    for document in DOCUMENTS:  # no development history in the user documentation
        text = document.read_text()
        assert not re.search(r"\bissue \d+|\(#\d+\)|\bcommit [0-9a-f]{7}|\ba review found\b|\bthis hour\b", text,
                             flags=re.I), document.name


@pytest.mark.parametrize("path,line,code", SNIPPETS,
                         ids=[f"{path.name}:{line}" for path, line, _ in SNIPPETS])
def test_snippet_runs_in_a_fresh_interpreter(path, line, code, saved_run, tmp_path):
    if "runs/ar-h3" in code:
        shutil.copytree(saved_run, tmp_path / "runs" / "ar-h3")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": "",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=SECONDS_PER_SNIPPET, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{path.name}, block at line {line}:\n{result.stderr[-3000:]}"
