"""The benchmark scripts of scripts/ run end to end at toy sizes and report what their tables claim.

Cache memory constant in the context for H3 and linear for GPT-2; training memory and step time for every model.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name: str, *args: str) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], check=True, cwd=ROOT,
                   capture_output=True, text=True, timeout=600)


def test_bench_generation_reports_constant_h3_cache_and_growing_kv_cache(tmp_path):
    out = tmp_path / "gen.json"
    run_script("bench_generation.py", "--contexts", "16", "64", "--batches", "1", "3", "--hidden-size", "32",
               "--layers", "2", "--heads", "2", "--vocab", "50", "--steps", "1", "--rounds", "2", "--warmup", "1",
               "--json", str(out), "--plot", str(tmp_path / "gen.png"))
    results = json.loads(out.read_text())["results"]
    assert (tmp_path / "gen.png").stat().st_size > 0
    for batch in ("1", "3"):
        h3 = results["H3 (pure)"][batch]
        gpt2 = results["GPT-2 (KV cache)"][batch]
        assert h3["16"]["cache_bytes"] == h3["64"]["cache_bytes"] > 0
        assert gpt2["64"]["cache_bytes"] == 4 * gpt2["16"]["cache_bytes"]
        timings = [r for per_batch in results.values() for r in per_batch[batch].values()]
        assert all(r["seconds_per_token"] > 0 and r["samples"] == 2 for r in timings)
    assert results["H3 (pure)"]["3"]["16"]["cache_bytes"] == 3 * results["H3 (pure)"]["1"]["16"]["cache_bytes"]


def test_bench_generation_generate_mode_times_prefill_and_steps_inside_generate(tmp_path):
    out = tmp_path / "generate.json"
    run_script("bench_generation.py", "--mode", "generate", "--contexts", "16", "64", "--batches", "1", "2",
               "--hidden-size", "32", "--layers", "2", "--heads", "2", "--vocab", "50", "--steps", "3", "--rounds", "1",
               "--models", "H3 (pure)", "GPT-2 (KV cache)", "--json", str(out))
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"H3 (pure)", "GPT-2 (KV cache)"}
    for batch in ("1", "2"):
        h3, gpt2 = results["H3 (pure)"][batch], results["GPT-2 (KV cache)"][batch]
        # after generate(): H3's state does not grow with the prompt, GPT-2's keys/values do (prompt + new tokens)
        assert h3["16"]["cache_bytes"] == h3["64"]["cache_bytes"] > 0
        assert gpt2["64"]["cache_bytes"] > gpt2["16"]["cache_bytes"] > 0
        # weights derived for decoding: at least H3's fused q/k/v weight per layer and its transposed LM head
        # (float32; width 32, 2 layers, vocabulary 50; the other weights are read in place), the same for every
        # context and batch; none for GPT-2
        transposed = 4 * (2 * 32 * 3 * 32 + 32 * 50)
        derived = h3["16"]["derived_bytes"]
        assert derived == h3["64"]["derived_bytes"] == results["H3 (pure)"]["1"]["16"]["derived_bytes"]
        assert derived >= transposed and gpt2["64"]["derived_bytes"] == 0
        for context in ("16", "64"):
            for r in (h3[context], gpt2[context]):
                assert r["prefill_seconds"] > 0 and r["seconds_per_token"] > 0 and r["first_step_seconds"] > 0
                expected = int(batch) * int(context) / r["prefill_seconds"]
                assert r["prefill_tokens_per_second"] == pytest.approx(expected)


def test_count_generate_ops_reports_prefill_and_decode_counts(capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import count_generate_ops

    count_generate_ops.main(["--shape", "toy", "--prompt", "16", "--new_tokens", "4", "--models", "h3", "gpt2"])
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| h3") or line.startswith("| gpt2")}
    assert set(rows) == {"h3", "gpt2"}
    prefill, first_step, per_step = (float(cell) for cell in rows["h3"])
    # no per-channel loop left: the prefill and the first step (which derives the step parameters) stay within a
    # few thousand ops for this 4-layer model, and a further step does not cost more than GPT-2's
    assert prefill < 4000 and first_step < 2000 and per_step <= 1.2 * float(rows["gpt2"][2])


@pytest.mark.slow  # four fresh processes (timing and memory for each model): about 45 s
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak memory is read from Linux /proc")
def test_bench_training_times_and_measures_h3_and_gpt2(tmp_path):
    out = tmp_path / "train.json"
    run_script("bench_training.py", "--lengths", "64", "--hidden-size", "32", "--layers", "2", "--heads", "2",
               "--vocab", "50", "--steps", "1", "--models", "h3", "gpt2", "--json", str(out),
               "--plot", str(tmp_path / "train.png"))
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"h3", "gpt2"}
    for per_length in report["results"].values():
        assert set(per_length) == {"64"}
        assert all(r["seconds_per_step"] > 0 and r["parameters"] > 0 and "peak_bytes" in r for r in per_length.values())
    assert re.fullmatch(r"L ~ \d+|H3 is faster at every measured length \(from L = 64\)|none up to L = 64",
                        report["crossover"])
    assert (tmp_path / "train.png").stat().st_size > 0


FIXTURE = os.path.join(ROOT, "tests", "fixtures", "h3-associative-recall")


def test_check_precision_reports_every_precision_and_the_trained_models_generation(tmp_path):
    out = tmp_path / "precision.json"
    run_script("check_precision.py", "--length", "128", "--width", "16", "--model_dir", FIXTURE, "--json", str(out))
    report = json.loads(out.read_text())
    assert {(r["model"], r["precision"], r["mode"]) for r in report["rows"]} == {
        (m, p, mode) for m in ("H3", "S4D", "S5") for p in ("bf16", "fp16") for mode in ("autocast", "weights")}
    assert all(r["finite"] and r["logits_error"] < 0.05 for r in report["rows"])
    generated = report["generation"]["results"]
    assert generated["float32"]["tokens_equal_to_float32"] == 1.0 and generated["float32"]["answer_accuracy"] > 0.9


def test_check_long_context_reports_a_constant_cache(tmp_path):
    out = tmp_path / "long.json"
    run_script("check_long_context.py", "--model_dir", FIXTURE, "--contexts", "256", "1024", "--prompts", "4",
               "--batch", "2", "--decode_tokens", "3", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["context"] for r in rows] == [20, 256, 1024]
    assert all(r["finite"] for r in rows)
    assert rows[1]["cache_bytes_after_prefill"] == rows[2]["cache_bytes_after_decode"] > 0


def test_bench_kernels_times_every_fast_path_against_its_baseline(tmp_path):
    out = tmp_path / "kernels.json"
    run_script("bench_kernels.py", "--lengths", "64", "--channels", "8", "--repeats", "1", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["SSM kernel fwd+bwd", "shift conv (64 taps)", "FFT conv fwd+bwd (L taps)",
                                         "H3 decode step"]
    assert all(r["baseline_s"] > 0 and r["fast_s"] > 0 for r in rows)


def test_profile_training_prints_the_ops_of_one_step():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "profile_training.py"), "--length", "64",
                             "--hidden-size", "32", "--layers", "2", "--vocab", "50", "--steps", "1", "--rows", "5"],
                            check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| aten::")]
    assert len(rows) >= 3 and "L=64" in result.stdout


@pytest.mark.slow  # builds and times two packages' models: about 30 s
def test_bench_revisions_times_both_checkouts_on_the_same_models(tmp_path):
    out = tmp_path / "revisions.json"
    run_script("bench_revisions.py", "--baseline", ROOT, "--contexts", "16", "--steps", "2", "--rounds", "2",
               "--train-length", "32", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["what"]) for r in rows] == [
        ("H3 (pure)", "decode step, context 16"), ("H3 (pure)", "training step, length 32"),
        ("H3 (hybrid, 1 attn)", "decode step, context 16"), ("H3 (hybrid, 1 attn)", "training step, length 32")]
    assert all(r["baseline"] > 0 and r["this"] > 0 for r in rows)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_revisions.py"), "--baseline",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no h3_hf/__init__.py there" in result.stderr
