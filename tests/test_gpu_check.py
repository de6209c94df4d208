"""scripts/gpu_check.sh: argument handling, per-item time limits and the CPU fallback (no GPU here)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_explains_the_command():
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("GPU checks in one command") and "--item_seconds" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--items", "bogus"], "argument --items: invalid choice: 'bogus'"),
    (["--steps", "1"], "--steps must be >= 2"),
    (["--device", "cuda"], "cuda asked for but torch sees no CUDA device"),
])
def test_bad_options_give_one_line_and_exit_2(args, message, capsys):
    if args[:2] == ["--device", "cuda"] and gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_an_item_over_its_time_limit_is_stopped():
    start = time.perf_counter()
    with pytest.raises(gpu_check.ItemTimeout):
        with gpu_check.time_limit(1):
            time.sleep(5)
    assert time.perf_counter() - start < 3


def test_cpu_fallback_runs_every_item_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run("--json", str(out), "--steps", "2", "--no_compile")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["shape"] == "tiny"
    items = report["items"]
    assert {name: item["status"] for name, item in items.items()} == {"train": "ok", "decode": "ok", "fft": "ok"}
    for length in gpu_check.SHAPES["tiny"]["train_lengths"]:
        assert items["train"][f"h3/{length}"]["ms_per_step"] > 0 and items["train"][f"gpt2_over_h3/{length}"] > 0
    assert all(items["decode"][kind]["eager_ms"] > 0 for kind in ("h3", "h3_hybrid", "gpt2"))
    assert 0 < items["fft"]["fraction_of_copy_bandwidth"] and items["fft"]["copy_gb_per_s"] > 0
