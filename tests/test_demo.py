"""`make demo` (scripts/demo.py) ends by generating, within its time budget whatever the accuracy reached."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "scripts", "demo.py")


def test_demo_stops_at_its_time_budget_then_reloads_and_generates(tmp_path):
    start = time.monotonic()
    result = subprocess.run([sys.executable, DEMO, "--max_seconds", "3", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Stopped by time after" in out
    assert "model.generate() answers" in out and "of the 500 test prompts" in out
    assert "pipeline('text-generation')" in out
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    assert time.monotonic() - start < 120


def test_demo_rejects_bad_options_in_one_line():
    result = subprocess.run([sys.executable, DEMO, "--max_seconds", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--max_seconds must be > 0" in result.stderr and "Traceback" not in result.stderr
