"""Reproduce the H3 paper's synthetic-language table: tasks x models x seeds, each run by train_synthetic.py.

Example:
    python scripts/reproduce_synthetics_table.py --output_dir runs/synthetics --jobs 2
    python scripts/reproduce_synthetics_table.py --output_dir runs/ar --tasks associative_recall --seeds 0 \\
        -- --loss_on all --num_train_epochs 40

Each run is a separate train_synthetic.py process (--jobs at a time, --threads each) writing to
OUTPUT_DIR/TASK-MODEL-seedSEED/ (its log: train.log; the flags it was made with: run_args.json). Options after
"--" go to every run. A run whose results.json exists is reused when it was made with the same flags and
train_synthetic.py's defaults still give the settings and the training examples it recorded, so an interrupted
grid resumes; otherwise the script stops and names what differs, unless --overwrite is given (then the run is
trained again). Writes OUTPUT_DIR/synthetics_table.md and OUTPUT_DIR/synthetics_table.json: test accuracy, the
mean and standard deviation over seeds, steps and seconds per run.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_synthetic  # noqa: E402
from script_utils import (  # noqa: E402
    ScriptArgumentParser,
    flag_value,
    parse_trainer_arguments,
    positive_int,
    training_summary,
)

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_synthetic.py")
TASKS = ("induction_head", "associative_recall", "mqar")
MODELS = ("s4d", "h3_shift_only", "h3_diag_only", "h3", "attention")
PAPER = {"induction_head": {"s4d": 35.6, "h3": 100.0, "attention": 100.0},
         "associative_recall": {"s4d": 86.0, "h3": 99.8, "attention": 100.0}}
RUN_RECORD = "run_args.json"


@dataclass
class Run:
    """One cell of the grid: a train_synthetic.py run and the flags it is made with (all but the output folder
    and the threads, which do not change its results)."""

    task: str
    model: str
    seed: int
    run_dir: str
    flags: list[str]

    @property
    def results_path(self) -> str:
        """Its results.json, written by train_synthetic.py at the end of the run."""
        return os.path.join(self.run_dir, "results.json")

    def command(self, threads: int | None) -> list[str]:
        """The train_synthetic.py command line; no progress bar (the output goes to train.log)."""
        extra = [] if threads is None else ["--threads", str(threads)]
        return [sys.executable, SCRIPT, "--output_dir", self.run_dir, "--disable_tqdm", "true", *extra, *self.flags]


def parse_args(argv: list[str]):
    parser = ScriptArgumentParser(__doc__, usage="%(prog)s --output_dir OUTPUT_DIR [--tasks TASK ...] "
                                  "[--models MODEL ...] [--seeds N ...] [OPTION ...] [-- TRAIN_SYNTHETIC_OPTION ...]")
    parser.add_argument("--output_dir", required=True, help="folder of the runs and the table")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                        help=f"the rows of the table, one or more of {', '.join(TASKS)} (default: all)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL",
                        help=f"the columns of the table, one or more of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of every cell")
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads of each run (default: 1, or torch's own choice when OMP_NUM_THREADS is set)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again the runs of OUTPUT_DIR that were made with other flags")
    parser.add_argument("--summarize_only", action="store_true",
                        help="train nothing: tabulate the runs of OUTPUT_DIR that have a results.json")
    parser.add_argument("--target_accuracy", type=float, default=None,
                        help="each run stops once its validation accuracy reaches this (above 1: never; default: "
                        "train_synthetic.py's, 0.995)")
    return parser, parser.parse_args(argv)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, the train_synthetic.py options after "--")."""
    if "--" not in argv:
        return argv, []
    return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def plan_runs(args, extra: list[str]) -> list[Run]:
    """Every (task, model, seed) of the grid with its run folder and flags."""
    if args.target_accuracy is not None:
        extra = ["--target_accuracy", str(args.target_accuracy), *extra]
    return [Run(task, model, seed, os.path.join(args.output_dir, f"{task}-{model}-seed{seed}"),
                ["--task", task, "--model", model, "--seed", str(seed), *extra])
            for task in args.tasks for model in args.models for seed in args.seeds]


def flag_values(flags: list[str]) -> dict[str, str]:
    """{"--name": "value"} of a train_synthetic.py flag list (a flag's value: the words up to the next --flag;
    the last occurrence wins, as in argparse)."""
    values, name = {}, None
    for word in flags:
        if word.startswith("--"):
            name, _, value = word.partition("=")
            values[name] = value
        elif name is not None:
            values[name] = f"{values[name]} {word}".strip()
    return values


def differing_flags(before: list[str], now: list[str]) -> list[str]:
    """Each flag whose value differs between two flag lists, as "--name (A before, B now)"."""
    old, new = flag_values(before), flag_values(now)

    def shown(values: dict[str, str], name: str) -> str:
        return "not given" if name not in values else values[name] or "set"  # "set": a flag without a value

    return [f"{name} ({shown(old, name)} before, {shown(new, name)} now)"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def recorded_flags(run: Run) -> list[str] | None:
    """The flags in the run folder's record, or None when there is none."""
    path = os.path.join(run.run_dir, RUN_RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["flags"]


def changed_runs(runs: list[Run]) -> list[tuple[Run, str]]:
    """(run, what differs) for every finished run of OUTPUT_DIR that was made with other flags than now, or
    without a record of its flags."""
    changed = []
    for run in runs:
        if not os.path.exists(run.results_path):
            continue  # never finished: it is trained (again) anyway
        before = recorded_flags(run)
        if before is None:
            changed.append((run, f"no record of its flags ({RUN_RECORD})"))
        elif differences := differing_flags(before, run.flags):  # the same values in another order: the same run
            changed.append((run, "; ".join(differences)))
        elif differences := changed_defaults(run):
            changed.append((run, "train_synthetic.py's defaults changed since: " + "; ".join(differences)))
        elif load_results(run).get("data_fingerprint") != data_fingerprint_now(run.flags):
            changed.append((run, "its results.json records other training examples than its flags give today "
                                 "(the task's generator changed, or the run predates the record)"))
    return changed


def parsed_run_flags(flags: list[str]):
    """train_synthetic.py's (arguments, TrainingArguments) for ``flags`` as it parses them today."""
    parser = train_synthetic.build_parser(flag_value(flags, "task", train_synthetic.DEFAULT_TASK))
    args, _, training_args = parse_trainer_arguments(parser, [*flags, "--output_dir", "unused"])
    return args, training_args


def resolved_settings(flags: list[str]) -> dict:
    """What train_synthetic.py runs with for ``flags`` today: its arguments and the TrainingArguments its
    results.json records, as JSON values."""
    args, training_args = parsed_run_flags(flags)
    return json.loads(json.dumps({**training_summary(training_args), **asdict(args)}, default=str))


def data_fingerprint_now(flags: list[str]) -> str:
    """The fingerprint of the examples train_synthetic.py generates for ``flags`` today."""
    return train_synthetic.data_fingerprint(train_synthetic.build_data(*parsed_run_flags(flags)))


def changed_defaults(run: Run) -> list[str]:
    """Each setting recorded in the run's results.json that train_synthetic.py now resolves otherwise for the same
    flags (a default changed), as "name (A before, B now)"."""
    results = load_results(run)
    before = {**results.get("training_args", {}), **results.get("args", {})}
    now = resolved_settings(run.flags)
    return [f"{name} ({before[name]} before, {now[name]} now)" for name in sorted(now)
            if name in before and before[name] != now[name]]


def train(run: Run, threads: int | None) -> dict | None:
    """Train one run, its flags recorded first; its results, or None if it failed."""
    os.makedirs(run.run_dir, exist_ok=True)
    command = run.command(threads)
    with open(os.path.join(run.run_dir, RUN_RECORD), "w") as f:
        json.dump({"flags": run.flags, "command": command}, f, indent=2)
    with open(os.path.join(run.run_dir, "train.log"), "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0 or not os.path.exists(run.results_path):
        return None
    return load_results(run)


def load_results(run: Run) -> dict:
    """The run's results.json."""
    with open(run.results_path) as f:
        return json.load(f)


class Progress:
    """Prints one line per finished run: "[3/30] associative_recall h3 seed 0: 99.8% in 1,250 steps, 41 s"."""

    def __init__(self, total: int):
        self.total, self.done, self.lock = total, 0, threading.Lock()

    def report(self, run: Run, results: dict | None, reused: bool):
        with self.lock:
            self.done += 1
            name = f"[{self.done}/{self.total}] {run.task} {run.model} seed {run.seed}"
            if results is None:
                print(f"{name}: failed, see {os.path.join(run.run_dir, 'train.log')}", flush=True)
            else:
                print(f"{name}: {100 * results['eval_accuracy']:.1f}% in {results['global_step']:,} steps, "
                      f"{results['train_runtime']:.0f} s" + (" (reused)" if reused else ""), flush=True)


def run_grid(runs: list[Run], jobs: int, threads: int | None) -> tuple[list[dict], list[Run]]:
    """Train the runs that have no results yet, ``jobs`` at a time, and reuse the others; (the results of every
    run that has some, the runs that failed)."""
    progress = Progress(len(runs))

    def one(run: Run) -> dict | None:
        reused = os.path.exists(run.results_path)
        results = load_results(run) if reused else train(run, threads)
        progress.report(run, results, reused)
        return results

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(one, runs))
    failed = [run for run, results in zip(runs, outcomes) if results is None]
    return [results for results in outcomes if results is not None], failed


def summarize(results: list[dict]) -> dict:
    table = {}
    for r in results:
        table.setdefault(r["task"], {}).setdefault(r["model"], []).append(r)
    summary = {}
    for task, models in table.items():
        summary[task] = {}
        for model, runs in models.items():
            acc = [100 * r["eval_accuracy"] for r in runs]
            steps, seconds = [r["global_step"] for r in runs], [r["train_runtime"] for r in runs]
            summary[task][model] = {
                "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
                "accuracies": acc, "seeds": [r["seed"] for r in runs],
                "steps_mean": statistics.mean(steps), "seconds_mean": statistics.mean(seconds),
                "spread": {name: [min(values), statistics.median(values), max(values)]
                           for name, values in (("accuracy", acc), ("steps", steps), ("seconds", seconds))},
                "num_parameters": runs[0]["num_parameters"], "random_baseline": 100 * runs[0]["random_baseline"],
                "task_params": {k: v for k, v in runs[0]["task_params"].items()
                                if k in ("vocab_size", "seq_len", "num_kv_pairs", "num_examples")},
            }
    return summary


def accuracy_cell(cell: dict) -> str:
    """"99.8 ± 0.2" over several seeds, "99.8 (1 seed)" for one."""
    if len(cell["accuracies"]) == 1:
        return f"{cell['accuracy_mean']:.1f} (1 seed)"
    return f"{cell['accuracy_mean']:.1f} ± {cell['accuracy_std']:.1f}"


def to_markdown(summary: dict, models: list[str]) -> str:
    lines = ["| task (vocab, length) | random | " + " | ".join(models) + " |",
             "|---|---|" + "---|" * len(models)]
    for task, row in summary.items():
        params = next(iter(row.values()))["task_params"]
        name = f"{task} ({params['vocab_size']}, {params['seq_len']}"
        name += f", {params['num_kv_pairs']} pairs)" if "num_kv_pairs" in params else ")"
        cells = []
        for model in models:
            if model not in row:
                cells.append("–")
                continue
            paper = PAPER.get(task, {}).get(model)
            cells.append(accuracy_cell(row[model]) + (f" ({paper})" if paper else ""))
        lines.append(f"| {name} | {next(iter(row.values()))['random_baseline']:.1f} | " + " | ".join(cells) + " |")
    spread = ["| task | model | accuracy % | training steps | training seconds |", "|---|---|---|---|---|"]
    for task, row in summary.items():
        for model in (m for m in models if m in row):
            cells = [" / ".join(f"{value:{fmt}}" for value in row[model]["spread"][name])
                     for name, fmt in (("accuracy", ".1f"), ("steps", ".0f"), ("seconds", ".0f"))]
            spread.append(f"| {task} | {model} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nPer run, min / median / max over the seeds:\n\n" + "\n".join(spread) + "\n")


def table_header(seeds: list[int], command: str | None, wall: float, jobs: int, reused: int, total: int) -> str:
    """The lines above the table: what the numbers are and, after training, the command that made them."""
    if len(seeds) == 1:
        header = f"Test accuracy (%) of seed {seeds[0]}; the paper's number in parentheses.\n"
    else:
        header = f"Test accuracy (%), mean ± std over seeds {seeds}; the paper's number in parentheses.\n"
    if command is not None:
        header += f"Command: `{command}`; wall time {wall / 60:.1f} min with {jobs} parallel runs"
        header += f" ({reused} of {total} runs reused from earlier calls).\n" if reused else ".\n"
    return header + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = "python scripts/reproduce_synthetics_table.py " + " ".join(argv)
    own, extra = split_extra(argv)
    parser, args = parse_args(own)
    runs = plan_runs(args, extra)
    start = time.time()
    reused = 0
    if args.summarize_only:
        results = [load_results(run) for run in runs if os.path.exists(run.results_path)]
    else:
        changed = changed_runs(runs)
        if changed and not args.overwrite:
            run, why = changed[0]
            more = f" (and {len(changed) - 1} more runs)" if len(changed) > 1 else ""
            parser.error(f"{run.run_dir} was made with other flags: {why}{more}; pass --overwrite to train it "
                         "again, or choose another --output_dir")
        for run, why in changed:
            print(f"training {run.run_dir} again (--overwrite): {why}", flush=True)
            shutil.rmtree(run.run_dir)
        reused = sum(os.path.exists(run.results_path) for run in runs)
        results, failed = run_grid(runs, args.jobs, args.threads)
        if failed:
            parser.exit(1, f"{parser.prog}: error: {len(failed)} of {len(runs)} runs failed, e.g. "
                           f"{failed[0].run_dir} (see its train.log)\n")
    wall = time.time() - start
    summary = summarize(results)
    markdown = to_markdown(summary, args.models)
    header = table_header(args.seeds, None if args.summarize_only else command, wall, args.jobs, reused, len(runs))
    with open(os.path.join(args.output_dir, "synthetics_table.md"), "w") as f:
        f.write(header + markdown)
    with open(os.path.join(args.output_dir, "synthetics_table.json"), "w") as f:
        json.dump({"summary": summary, "wall_time_s": wall, "jobs": args.jobs, "extra_args": extra}, f, indent=2)
    print(header + markdown)
    return summary


if __name__ == "__main__":
    main()
