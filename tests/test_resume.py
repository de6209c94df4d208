"""resume_from_checkpoint in the training scripts: a resumed run ends where the uninterrupted run ends.

It also reports the training time of the whole run.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_classifier  # noqa: E402
import train_synthetic  # noqa: E402

STEPS = 8
SYNTHETIC = ["--task", "associative_recall", "--model", "h3", "--num_train", "96", "--num_validation", "16",
             "--num_test", "16", "--per_device_train_batch_size", "8", "--eval_steps", "100"]  # dropout stays on
CLASSIFIER = ["--model", "s5", "--dataset", "listops", "--hidden_size", "16", "--num_hidden_layers", "1",
              "--state_size", "8", "--blocks", "2", "--listops_train_size", "96", "--listops_test_size", "16",
              "--listops_min_length", "10", "--listops_max_length", "40", "--per_device_train_batch_size", "8"]


def record_training_seconds(checkpoint: Path, seconds: float) -> float:
    """Set the training seconds that ``checkpoint`` records (trainer_state.json); returns the recorded ones."""
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    clock = state["stateful_callbacks"]["TrainingClock"]["args"]
    recorded, clock["seconds_before"] = clock["seconds_before"], seconds
    path.write_text(json.dumps(state))
    return recorded


@pytest.mark.parametrize("script, flags", [(train_synthetic, SYNTHETIC), (train_classifier, CLASSIFIER)],
                         ids=["h3-synthetic", "s5-listops"])
def test_resumed_run_matches_the_uninterrupted_run(script, flags, tmp_path):
    common = [*flags, "--max_steps", str(STEPS), "--seed", "3", "--log_level", "error", "--disable_tqdm", "true"]
    full = tmp_path / "full"
    script.main([*common, "--output_dir", str(full), "--save_strategy", "steps", "--save_steps", str(STEPS // 2)])
    # what an interrupted run leaves behind: only its step-4 checkpoint, in a folder of its own
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full / f"checkpoint-{STEPS // 2}", interrupted / f"checkpoint-{STEPS // 2}")
    first_half = record_training_seconds(interrupted / f"checkpoint-{STEPS // 2}", 1000.0)
    results = script.main([*common, "--output_dir", str(interrupted), "--save_strategy", "no",
                           "--resume_from_checkpoint", str(interrupted / f"checkpoint-{STEPS // 2}")])
    assert results["global_step"] == STEPS
    # train_runtime is the whole run's: the first half's seconds (as the checkpoint records them) + the second's
    full_runtime = json.loads((full / "results.json").read_text())["train_runtime"]
    assert 0 < first_half < full_runtime
    assert 1000.0 < results["train_runtime"] < 1000.0 + results["wall_time"]

    expected, resumed = load_file(str(full / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    half_way = load_file(str(interrupted / f"checkpoint-{STEPS // 2}" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)
    # the second half did train: the final weights are not the half-way ones
    assert any(not torch.allclose(expected[name], half_way[name]) for name in expected)
