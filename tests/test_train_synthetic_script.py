"""train_synthetic.py end to end: every --model builds the backbone it names; H3 learns associative recall."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import h3_hf  # noqa: F401
from h3_hf.data.synthetics import load_synthetic

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import reproduce_synthetics_table  # noqa: E402
import train_synthetic  # noqa: E402
from script_utils import flag_value, parse_trainer_arguments  # noqa: E402

TINY = ["--num_train", "64", "--num_validation", "16", "--num_test", "16", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "16", "--eval_steps", "2", "--logging_steps", "1"]


@pytest.mark.parametrize("model,mixers", [
    ("h3", {"h3"}), ("attention", {"attention"}), ("s4d", {"s4d"}), ("h3_shift_only", {"h3_shift_only"}),
    ("h3_diag_only", {"h3_diag_only"}),
])
def test_each_model_option_runs_and_writes_results(tmp_path, model, mixers):
    results = train_synthetic.main(["--task", "induction_head", "--model", model, "--output_dir", str(tmp_path),
                                    *TINY])
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    config = loaded.config
    kinds = {"attention" if i in config.attn_layer_idx else config.mixer_type for i in range(config.num_hidden_layers)}
    assert kinds == mixers and config.num_hidden_layers == 2 and config.hidden_size == 32
    assert all(block.is_attention == (model == "attention") for block in loaded.backbone.layers)
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("eval_accuracy", "global_step", "train_runtime", "num_parameters", "task_params"):
        assert key in saved
    assert saved["eval_accuracy"] == results["eval_accuracy"]
    assert saved["global_step"] == 4 and saved["task_params"]["vocab_size"] == 20
    assert saved["num_parameters"] == sum(p.numel() for p in loaded.parameters())
    assert (tmp_path / "training_curve.png").stat().st_size > 1000


def test_init_from_starts_at_the_saved_weights_at_another_length(tmp_path):
    """--init_from loads a run's weights (here trained at length 30) into the model trained at length 64: with a
    zero learning rate the saved model is the one it started from."""
    first, second = tmp_path / "short", tmp_path / "long"
    train_synthetic.main(["--task", "induction_head", "--output_dir", str(first), *TINY])
    train_synthetic.main(["--task", "induction_head", "--seq_len", "64", "--init_from", str(first),
                          "--learning_rate", "0", "--output_dir", str(second), *TINY])
    start, end = (AutoModelForCausalLM.from_pretrained(str(folder)).state_dict() for folder in (first, second))
    assert json.loads((second / "results.json").read_text())["task_params"]["seq_len"] == 64
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)


def test_trained_model_answers_through_generate_and_pipeline(tmp_path):
    """A short run learns associative recall beyond chance; generate() and the pipeline give the same answers."""
    results = train_synthetic.main(["--task", "associative_recall", "--model", "h3", "--output_dir", str(tmp_path),
                                    "--num_train_epochs", "8", "--num_train", "2000", "--eval_steps", "10000",
                                    "--loss_on", "all", "--seed", "0"])
    assert results["eval_accuracy"] > 0.4  # random guessing: 0.25
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    test = load_synthetic("associative_recall", num_train=2000, seed=0)["test"]
    prompts = [tok.decode(ids[:-1]) for ids in test["input_ids"][:40]]
    batch = tok(prompts, return_tensors="pt", padding=True)
    generated = model.generate(**batch, max_new_tokens=1, do_sample=False)[:, -1]
    with torch.no_grad():  # independent reference: argmax of an unbatched, uncached forward pass
        reference = [model(torch.tensor([ids[:-1]]), use_cache=False).logits[0, -1].argmax().item()
                     for ids in test["input_ids"][:40]]
    assert generated.tolist() == reference
    every = torch.tensor(test["input_ids"])  # all 500 test prompts: generate() scores as the script's evaluation
    answered = model.generate(every[:, :-1], attention_mask=torch.ones_like(every[:, :-1]), max_new_tokens=1,
                              do_sample=False)[:, -1]
    assert (answered == every[:, -1]).float().mean().item() == pytest.approx(results["eval_accuracy"], abs=1e-6)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    out = generator(prompts[:3], max_new_tokens=1, do_sample=False, return_full_text=False)
    assert [o[0]["generated_text"].strip() for o in out] == [tok.decode([r]).strip() for r in reference[:3]]


def test_bad_model_flag_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_synthetic.main(["--task", "induction_head", "--model", "mamba", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "argument --model: invalid choice: 'mamba'" in capsys.readouterr().err


def test_grid_script_summarises_runs(tmp_path):
    summary = reproduce_synthetics_table.main([
        "--output_dir", str(tmp_path), "--tasks", "associative_recall", "--models", "h3", "s4d", "--seeds", "0", "1",
        "--target_accuracy", "2", "--", *TINY])
    row = summary["associative_recall"]
    assert set(row) == {"h3", "s4d"} and row["h3"]["seeds"] == [0, 1] and len(row["s4d"]["accuracies"]) == 2
    accuracies = sorted(row["h3"]["accuracies"])
    assert row["h3"]["spread"]["accuracy"] == [accuracies[0], sum(accuracies) / 2, accuracies[1]]
    markdown = (tmp_path / "synthetics_table.md").read_text()
    assert "| associative_recall (10, 20) | 25.0 |" in markdown
    assert "| associative_recall | s4d | " in markdown and "min / median / max" in markdown
    assert json.loads((tmp_path / "synthetics_table.json").read_text())["summary"]["associative_recall"]["h3"]
    assert all((tmp_path / f"associative_recall-{m}-seed{s}" / "run_args.json").exists() for m in ("h3", "s4d")
               for s in (0, 1))


def fingerprint(flags: list[str]) -> str:
    """What train_synthetic.py records for its command line ``flags``: the fingerprint of its examples (generated
    here from the parsed flags with load_synthetic itself)."""
    parser = train_synthetic.build_parser(flag_value(flags, "task", train_synthetic.DEFAULT_TASK))
    args, _, training_args = parse_trainer_arguments(parser, [*flags, "--output_dir", "unused"])
    data = load_synthetic(args.task, num_train=args.num_train, num_validation=args.num_validation,
                          num_test=args.num_test, seed=training_args.seed if args.dataset_seed is None
                          else args.dataset_seed)
    return train_synthetic.data_fingerprint(data)


def test_data_fingerprint_changes_with_any_token_and_not_otherwise():
    data = load_synthetic("associative_recall", num_train=200, num_validation=20, num_test=20, seed=1)
    again = load_synthetic("associative_recall", num_train=200, num_validation=20, num_test=20, seed=1)
    assert train_synthetic.data_fingerprint(data) == train_synthetic.data_fingerprint(again)
    ids = [list(row) for row in again["test"]["input_ids"]]
    ids[7][3] = (ids[7][3] + 1) % 4  # another key at one position of one test example
    again["test"] = again["test"].remove_columns("input_ids").add_column("input_ids", ids)
    assert train_synthetic.data_fingerprint(data) != train_synthetic.data_fingerprint(again)


@pytest.fixture
def fake_training(monkeypatch):
    """reproduce_synthetics_table's runs without training: each train_synthetic.py command writes a results.json
    at once. Returns the list of commands run."""
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        values = dict(zip(command[2::2], command[3::2]))  # the script's --flag value pairs
        results = {"task": values["--task"], "model": values["--model"], "seed": int(values["--seed"]),
                   "eval_accuracy": 0.998, "global_step": 10, "train_runtime": 1.5, "num_parameters": 100,
                   "random_baseline": 0.25, "task_params": {"vocab_size": 10, "seq_len": 20},
                   "data_fingerprint": fingerprint(command[2:])}
        with open(os.path.join(values["--output_dir"], "results.json"), "w") as f:
            json.dump(results, f)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(reproduce_synthetics_table.subprocess, "run", run)
    return commands


def test_grid_reuses_a_run_only_when_made_with_the_same_flags(tmp_path, fake_training, capsys):
    grid = ["--output_dir", str(tmp_path), "--tasks", "associative_recall", "--models", "h3", "--seeds", "0"]
    run_dir = tmp_path / "associative_recall-h3-seed0"
    reproduce_synthetics_table.main([*grid, "--threads", "3", "--", "--num_train_epochs", "5"])
    assert len(fake_training) == 1 and fake_training[0][fake_training[0].index("--threads") + 1] == "3"
    out = capsys.readouterr().out
    assert "99.8 (1 seed)" in out and "±" not in out and "Test accuracy (%) of seed 0" in out
    assert json.loads((run_dir / "run_args.json").read_text())["flags"][-2:] == ["--num_train_epochs", "5"]

    reproduce_synthetics_table.main([*grid, "--threads", "1", "--", "--num_train_epochs", "5"])  # same flags
    assert len(fake_training) == 1 and "(reused)" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        reproduce_synthetics_table.main([*grid, "--", "--num_train_epochs", "8", "--loss_on", "all"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and len(fake_training) == 1
    assert f"{run_dir} was made with other flags: --loss_on (not given before, all now); " \
           f"--num_train_epochs (5 before, 8 now); pass --overwrite" in err

    reproduce_synthetics_table.main([*grid, "--overwrite", "--", "--num_train_epochs", "8"])
    assert len(fake_training) == 2 and f"training {run_dir} again (--overwrite)" in capsys.readouterr().out
    assert json.loads((run_dir / "run_args.json").read_text())["flags"][-1] == "8"


def test_grid_refuses_a_run_trained_before_a_default_changed(tmp_path, fake_training, capsys):
    """Same flags, but the run's results.json records a setting train_synthetic.py no longer uses by default."""
    grid = ["--output_dir", str(tmp_path), "--tasks", "associative_recall", "--models", "h3", "--seeds", "0"]
    reproduce_synthetics_table.main(grid)
    results_path = tmp_path / "associative_recall-h3-seed0" / "results.json"
    results = json.loads(results_path.read_text())
    now = train_synthetic.script_defaults("associative_recall")
    recorded = {"learning_rate": now["learning_rate"], "weight_decay": now["weight_decay"] + 0.25}
    results_path.write_text(json.dumps({**results, "training_args": recorded, "args": {"loss_on": "all"}}))
    with pytest.raises(SystemExit) as exit_info:
        reproduce_synthetics_table.main(grid)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(fake_training) == 1
    assert (f"train_synthetic.py's defaults changed since: weight_decay ({now['weight_decay'] + 0.25} before, "
            f"{now['weight_decay']} now); pass --overwrite") in err
    recorded["weight_decay"] = now["weight_decay"]
    results_path.write_text(json.dumps({**results, "training_args": recorded, "args": {"loss_on": "all"}}))
    reproduce_synthetics_table.main(grid)
    assert len(fake_training) == 1 and "(reused)" in capsys.readouterr().out


def test_grid_refuses_a_run_trained_on_other_examples(tmp_path, fake_training, capsys):
    """Same flags and settings, but the examples it recorded are not those the generator gives today."""
    grid = ["--output_dir", str(tmp_path), "--tasks", "associative_recall", "--models", "h3", "--seeds", "0"]
    reproduce_synthetics_table.main(grid)
    results_path = tmp_path / "associative_recall-h3-seed0" / "results.json"
    results = json.loads(results_path.read_text())
    for recorded in ({**results, "data_fingerprint": "0" * 64}, {k: v for k, v in results.items()
                                                                 if k != "data_fingerprint"}):
        results_path.write_text(json.dumps(recorded))
        with pytest.raises(SystemExit) as exit_info:
            reproduce_synthetics_table.main(grid)
        assert exit_info.value.code == 2 and len(fake_training) == 1
        assert "records other training examples than its flags give today" in capsys.readouterr().err
    results_path.write_text(json.dumps(results))
    reproduce_synthetics_table.main(grid)
    assert len(fake_training) == 1 and "(reused)" in capsys.readouterr().out


def test_grid_refuses_a_finished_run_without_a_record_of_its_flags(tmp_path, fake_training, capsys):
    run_dir = tmp_path / "induction_head-s4d-seed1"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        reproduce_synthetics_table.main(["--output_dir", str(tmp_path), "--tasks", "induction_head", "--models",
                                         "s4d", "--seeds", "1"])
    assert "no record of its flags" in capsys.readouterr().err and not fake_training


@pytest.mark.slow
@pytest.mark.parametrize("task", ["induction_head", "associative_recall"])
def test_default_command_gets_h3_to_99_percent_within_10_minutes(tmp_path, task):
    """The README's command as a user types it (default seed 42, not one the recipe was chosen on)."""
    results = train_synthetic.main(["--task", task, "--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    assert results["model"] == "h3" and results["args"]["loss_on"] == "all"
    assert results["eval_accuracy"] >= 0.99 and results["train_runtime"] < 600


@pytest.mark.slow
def test_s4d_does_not_learn_induction_head_within_h3s_budget(tmp_path):
    """The paper's separation with the same recipe: H3 needs at most ~35 epochs on the seeds measured; S4D is far
    from 90% after 40."""
    s4d = train_synthetic.main(["--task", "induction_head", "--model", "s4d", "--output_dir", str(tmp_path),
                                "--num_train_epochs", "40", "--disable_tqdm", "true"])
    assert s4d["eval_accuracy"] < 0.9


def test_bf16_mixed_precision_training_keeps_ssm_math_in_float32(tmp_path, monkeypatch):
    """``--bf16`` (CPU autocast here, CUDA autocast on a GPU) runs the MLPs in bfloat16 while every FFT of the
    SSM convolutions sees float32 inputs (the H3 mixer switches autocast off); training stays finite."""
    fft_dtypes, fft_under_autocast, projection_dtypes = set(), set(), set()
    real_rfft = torch.fft.rfft

    def recording_rfft(x, *args, **kwargs):
        fft_dtypes.add(x.dtype)
        fft_under_autocast.add(torch.is_autocast_enabled("cpu"))
        return real_rfft(x, *args, **kwargs)

    real_build = train_synthetic.build_model

    def build_with_hook(*args, **kwargs):
        model = real_build(*args, **kwargs)
        mlp_linear = next(m for m in model.backbone.layers[0].mlp.modules() if isinstance(m, torch.nn.Linear))
        mlp_linear.register_forward_hook(lambda module, inputs, output: projection_dtypes.add(output.dtype))
        return model

    monkeypatch.setattr(torch.fft, "rfft", recording_rfft)
    monkeypatch.setattr(train_synthetic, "build_model", build_with_hook)
    results = train_synthetic.main([
        "--task", "associative_recall", "--model", "h3", "--output_dir", str(tmp_path), "--num_train", "64",
        "--num_validation", "32", "--num_test", "32", "--max_steps", "4", "--eval_steps", "4",
        "--per_device_train_batch_size", "16", "--bf16", "true", "--use_cpu", "true", "--log_level", "error"])
    assert torch.bfloat16 in projection_dtypes  # autocast really was on
    assert fft_dtypes == {torch.float32} and fft_under_autocast == {False}
    assert np.isfinite(results["test_loss"])
