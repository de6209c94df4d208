"""scripts/train_sharded.py: FSDP2 training of H3 in a plain torch loop on 2 CPU processes, saving and resuming."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from h3_hf import H3ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden_size", "16", "--num_train", "64", "--num_test", "16", "--global_batch_size", "8",
         "--max_steps", "4", "--save_steps", "2"]


def torchrun(output_dir: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "scripts" / "train_sharded.py"), "--output_dir", str(output_dir), *SMALL]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output_dir / "results.json").read_text())


def test_sharded_run_saves_a_loadable_model_and_resumes_to_the_same_weights(tmp_path):
    whole = torchrun(tmp_path / "whole")
    assert whole["processes"] == 2 and whole["resumed_from_step"] == 0 and 0 <= whole["test_accuracy"] <= 1

    model = H3ForCausalLM.from_pretrained(tmp_path / "whole")  # gathered on rank 0, written by save_pretrained
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "whole")
    assert model.config.vocab_size == len(tokenizer.get_vocab()) - 1  # the task's tokens, then <pad>
    trained = load_file(tmp_path / "whole" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[name], value) for name, value in trained.items())

    # a second run that finds the checkpoint of step 2 continues from it and ends on the same weights
    shutil.copytree(tmp_path / "whole" / "checkpoint", tmp_path / "resumed" / "checkpoint")
    resumed = torchrun(tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    final = load_file(tmp_path / "resumed" / "model.safetensors")
    assert final.keys() == trained.keys()
    for name, value in trained.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)
    assert resumed["last_losses"][-2:] == whole["last_losses"][-2:]
