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


class _Captured(Exception):
    pass


def test_demo_trains_with_the_synthetic_scripts_recipe(monkeypatch, tmp_path):
    """The demo's Trainer gets train_synthetic.py's defaults for its task and its optimizer: SSM parameters without
    weight decay, the other weights with the task's (Trainer's own AdamW would decay the SSM parameters too)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import demo
    import train_synthetic

    captured = {}

    def capture(**kwargs):
        captured.update(kwargs)
        raise _Captured

    monkeypatch.setattr(demo, "Trainer", capture)
    try:
        demo.train(demo.parse_args(["--output_dir", str(tmp_path)]), str(tmp_path))
    except _Captured:
        pass
    defaults = train_synthetic.script_defaults(demo.TASK)
    args = captured["args"]
    assert (args.learning_rate, args.weight_decay, args.num_train_epochs) == (
        defaults["learning_rate"], defaults["weight_decay"], defaults["num_train_epochs"])
    optimizer, scheduler = captured["optimizers"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["ssm"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == defaults["weight_decay"]
    ssm_names = {n for n, p in captured["model"].named_parameters() if any(p is q for q in groups["ssm"]["params"])}
    assert ssm_names and all(n.rsplit(".", 1)[-1] in ("log_dt", "inv_A_real", "A_imag", "B") for n in ssm_names)
