"""The command lines of scripts/: --help, bad option values and bad files.

--help explains each script without doing work, bad option values and bad files end in one line on stderr with exit
code 2, and the Trainer scripts' help shows the defaults a run really uses.
"""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS_DIR))
# every file of scripts/ that runs as a program (bench_common.py and script_utils.py are helper modules)
SCRIPTS = sorted(p.name for p in SCRIPTS_DIR.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())
# scripts whose --help does not explain them yet: the test fails once they do, so that they join the others
HELP_WITHOUT_DESCRIPTION = {}


def run_script(name: str, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``python scripts/NAME args`` in ``cwd``; (the finished process, its seconds)."""
    start = time.perf_counter()
    finished = subprocess.run([sys.executable, str(SCRIPTS_DIR / name), *args], cwd=cwd, capture_output=True,
                              text=True, timeout=120)
    return finished, time.perf_counter() - start


def run_main(name: str, argv: list[str], monkeypatch) -> int:
    """The exit code of ``main()`` of script ``name`` called with ``sys.argv = [name, *argv]``."""
    module = importlib.import_module(name.removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    return exit_info.value.code or 0


def test_every_program_of_scripts_is_covered():
    assert {"train_synthetic.py", "train_classifier.py", "reproduce_synthetics_table.py", "demo_s4d_digits.py",
            "convert_h3_original_checkpoint.py", "bench_training.py", "check_precision.py"} <= set(SCRIPTS)
    assert "script_utils.py" not in SCRIPTS and "bench_common.py" not in SCRIPTS


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=HELP_WITHOUT_DESCRIPTION[name], strict=True))
    if name in HELP_WITHOUT_DESCRIPTION else name for name in SCRIPTS])
def test_help_describes_the_script_with_an_example_and_does_nothing_else(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # scripts write relative default paths (bench_*.json) here
    start = time.perf_counter()
    code = run_main(name, ["--help"], monkeypatch)
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    summary = importlib.import_module(name.removesuffix(".py")).__doc__.strip().splitlines()[0]
    assert code == 0 and seconds < 30
    assert summary in out and out.index(summary) < out.index("-h, --help")  # what it does, before the options
    assert "Example" in out or f"{name} --" in out
    assert list(tmp_path.iterdir()) == []


def test_help_runs_in_seconds_in_a_fresh_interpreter_and_trains_nothing(tmp_path):
    """The digits demo (a training run when started without --help) and a Trainer script (the most imports)."""
    for name in ("demo_s4d_digits.py", "train_classifier.py"):
        finished, seconds = run_script(name, "--help", cwd=tmp_path)
        assert finished.returncode == 0 and seconds < 30, finished.stderr
        assert finished.stdout.lstrip().startswith(importlib.import_module(name[:-3]).__doc__.strip()[:40])
        assert "Example:" in finished.stdout
    assert list(tmp_path.iterdir()) == []


def test_training_help_shows_the_defaults_runs_use(monkeypatch, capsys):
    assert run_main("train_synthetic.py", ["--help"], monkeypatch) == 0
    text = " ".join(capsys.readouterr().out.split())  # help lines are wrapped to the terminal
    assert "--learning_rate X peak AdamW learning rate (default: 0.003)" in text
    assert "--per_device_train_batch_size N training batch size (per process) (default: 32)" in text
    assert "(default: 80 for induction_head and associative_recall, 12 for mqar)" in text
    assert "(default: all)" in text and "(above 1: train to the end) (default: 0.995)" in text
    assert "--task {induction_head,associative_recall,mqar}" in text and "--threads N" in text
    assert "--gradient_accumulation_steps" in text and "--gradient_accumulation_steps N" not in text  # --help-all
    assert "--help-all" in text and "5e-05" not in text  # transformers' own learning rate is not shown

    assert run_main("train_classifier.py", ["--help"], monkeypatch) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.01; 0.004 for --model s5)" in text
    assert "(default: 30 for digits and digits_irregular, 4 for listops)" in text


def test_help_all_lists_every_training_argument(monkeypatch, capsys):
    assert run_main("train_synthetic.py", ["--help-all"], monkeypatch) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--gradient_accumulation_steps N" in text
    assert "--learning_rate X peak AdamW learning rate (default: 0.003)" in text


@pytest.fixture
def default_verbosity():
    """transformers' default log level (TrainingArguments hides the progress bar above WARNING; in-process runs
    of the scripts with --log_level error in other tests leave it raised, a fresh process does not)."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_warning()
    yield
    logging.set_verbosity(before)


def test_parsed_defaults_are_the_ones_help_shows(default_verbosity):
    import train_classifier
    import train_synthetic
    from script_utils import parse_trainer_arguments

    args, threads, training = parse_trainer_arguments(train_synthetic.build_parser("induction_head"), [])
    assert (training.learning_rate, training.weight_decay, training.num_train_epochs) == (3e-3, 0.1, 80)
    assert (training.lr_scheduler_type.value, training.eval_steps, training.disable_tqdm) == ("cosine", 250, False)
    assert (args.loss_on, args.target_accuracy, threads.threads) == ("all", 0.995, None)
    model_args, data_args, _, training = parse_trainer_arguments(train_classifier.build_parser("listops", "s5"), [])
    assert (training.learning_rate, training.weight_decay, training.num_train_epochs) == (4e-3, 0.05, 4)
    assert model_args.bidirectional is True and data_args.listops_train_size == 12000


@pytest.mark.parametrize("name, argv, words", [
    ("train_synthetic.py", ["--model", "mamba"], "argument --model: invalid choice: 'mamba'"),
    ("train_synthetic.py", ["--task", "copying"], "argument --task: invalid choice: 'copying'"),
    ("train_synthetic.py", ["--loss_on", "some"], "invalid choice: 'some'"),
    ("train_synthetic.py", ["--threads", "0"], "argument --threads: must be at least 1"),
    ("train_synthetic.py", ["--learning_rate", "fast"], "invalid float value: 'fast'"),
    ("train_synthetic.py", ["--no_such_option", "1"], "unrecognized arguments: --no_such_option 1"),
    ("train_synthetic.py", ["--task", "induction_head", "--seq_len", "2"], "seq_len=2 is invalid"),
    ("train_synthetic.py", ["--resume_from_checkpoint", "no/such/folder"], "--resume_from_checkpoint: no folder"),
    ("train_classifier.py", ["--model", "s6"], "argument --model: invalid choice: 's6'"),
    ("train_classifier.py", ["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    ("train_classifier.py", ["--dataset", "digits_irregular"], "needs --model s5"),
    ("train_classifier.py", ["--model", "s5", "--state_size", "6", "--blocks", "4"], "must divide state_size=6"),
    ("reproduce_synthetics_table.py", ["--output_dir", "x", "--tasks", "copying"], "invalid choice: 'copying'"),
    ("reproduce_synthetics_table.py", ["--output_dir", "x", "--models", "mamba"], "invalid choice: 'mamba'"),
    ("reproduce_synthetics_table.py", ["--output_dir", "x", "--jobs", "0"], "argument --jobs: must be at least 1"),
    ("demo_s4d_digits.py", ["--threads", "-1"], "argument --threads: must be at least 1"),
    ("convert_h3_original_checkpoint.py", ["--checkpoint", "a.pt", "--output", "b", "--disc", "euler"],
     "argument --disc: invalid choice: 'euler'"),
    ("bench_training.py", ["--models", "rwkv"], "invalid choice: 'rwkv'"),
])
def test_a_bad_option_value_is_one_line_and_exit_code_2(name, argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(name, [*argv, *(["--output_dir", "out"] if name.startswith("train_") else [])], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{name}: error: ") and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_choice_in_a_fresh_interpreter_prints_one_line_and_no_traceback(tmp_path):
    finished, _ = run_script("train_synthetic.py", "--model", "mamba", "--output_dir", "out", cwd=tmp_path)
    assert finished.returncode == 2 and finished.stdout == ""
    assert finished.stderr.splitlines() == [
        "train_synthetic.py: error: argument --model: invalid choice: 'mamba' "
        "(choose from 'h3', 'attention', 's4d', 'h3_shift_only', 'h3_diag_only')"]


class Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a file that is no H3 checkpoint, words its error must contain)."""
    from safetensors.torch import save_file

    files = {}

    def add(name, words, write):
        path = folder / name
        write(path)
        files[name] = (path, words)

    add("random.bin", "model.pt", lambda p: p.write_bytes(bytes(range(256)) * 8))
    add("notes.txt", "not a PyTorch checkpoint", lambda p: p.write_text("hello world\n"))
    add("empty.bin", "not a PyTorch checkpoint", lambda p: p.write_bytes(b""))
    add("weights.safetensors", "no H3 embedding", lambda p: save_file({"a": torch.zeros(2)}, str(p)))
    add("other.pt", "no H3 embedding", lambda p: torch.save({"encoder.weight": torch.zeros(2, 2)}, p))
    add("tensor.pt", "holds a Tensor", lambda p: torch.save(torch.zeros(3), p))
    add("list.pt", "holds a list", lambda p: torch.save([1, 2], p))
    add("no_tensors.pt", "holds no tensors", lambda p: torch.save({"epoch": 3}, p))
    add("payload.pt", "refused by torch.load(weights_only=True)",
        lambda p: torch.save({"x": Payload(folder / "pwned")}, p))
    files["missing.pt"] = (folder / "missing.pt", "cannot read the file")
    return files


def test_every_bad_checkpoint_file_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    for name, (path, words) in bad_checkpoints(tmp_path).items():
        out = tmp_path / f"converted-{name}"
        assert run_main("convert_h3_original_checkpoint.py", ["--checkpoint", str(path), "--output", str(out)],
                        monkeypatch) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"convert_h3_original_checkpoint.py: error: {path}: "), err
        assert words in err, (name, err)
        assert not out.exists()
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran


def test_a_bad_checkpoint_in_a_fresh_interpreter_prints_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world\n")
    finished, _ = run_script("convert_h3_original_checkpoint.py", "--checkpoint", "notes.txt", "--output", "out",
                             cwd=tmp_path)
    assert finished.returncode == 2
    (line,) = finished.stderr.splitlines()
    assert line.startswith("convert_h3_original_checkpoint.py: error: notes.txt: not a PyTorch checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_set_threads_follows_the_option_then_the_environment_then_the_idle_cores(monkeypatch):
    import script_utils

    torch.set_num_threads(2)
    assert script_utils.set_threads(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert script_utils.set_threads(None) == 1  # left as the environment made it
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(2)
    for idle, threads in ((1.9, 2), (1.1, 1), (0.2, 1)):  # one core busy elsewhere: one thread
        monkeypatch.setattr(script_utils, "idle_cores", lambda idle=idle: idle)
        assert script_utils.set_threads(None) == threads
        torch.set_num_threads(2)
    monkeypatch.undo()
    idle = script_utils.idle_cores(0.05)
    assert idle is None or 0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_flag_value_reads_both_spellings():
    from script_utils import flag_value

    assert flag_value(["--task", "mqar", "--seed", "1"], "task", "x") == "mqar"
    assert flag_value(["--task=induction_head"], "task", "x") == "induction_head"
    assert flag_value(["--seed", "1"], "task", "x") == "x"
