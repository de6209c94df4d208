"""Helpers shared by the scripts in this folder; not part of the h3_hf library.

- command lines: :class:`ScriptArgumentParser` (argparse) and :func:`trainer_argument_parser` (transformers'
  HfArgumentParser) print the script's docstring first in ``--help`` and turn every bad option into one line
  ``script.py: error: ...`` with exit code 2; :func:`parse_trainer_arguments`, :func:`flag_value` and
  :func:`defaults_by_choice` serve the two Trainer scripts, whose own defaults replace TrainingArguments';
- CPU threads: :func:`set_threads` and the ``--threads`` option (:data:`THREADS_HELP`, :class:`ThreadArguments`);
- runs: :func:`classification_accuracy`, :func:`training_summary`, :func:`save_results`, and
  :class:`TrainingClock` / :func:`checkpoint_training_seconds`, which make ``train_runtime`` count the whole
  training of a run resumed from a checkpoint.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

THREADS_HELP = ("CPU threads of torch (default: the cores idle when the script starts, or torch's own choice when "
                "OMP_NUM_THREADS is set; more threads than idle cores slow training down several times)")
TRAINER_OPTIONS_TITLE = "Trainer options this script sets or that are often used (TrainingArguments)"
HELP_ALL_EPILOG = ("Every other TrainingArguments option (--gradient_accumulation_steps, --bf16, --save_steps,\n"
                   "--hub_model_id, ...) is accepted too: --help-all lists them all with transformers' defaults.")


# ----------------------------------------------------------------------------------------------------------------
# command lines


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help layout of the scripts: the docstring's line breaks kept; ``(default: X)`` appended to an option's help
    unless the help already says what the default is (it mentions "default") or there is none to show (None, a
    flag's False); each option shown once (HfArgumentParser's ``--a-b`` spelling of ``--a_b`` is accepted but not
    listed); short placeholders (N for integers, X for numbers, BOOL) and no list of more than
    :attr:`MAX_CHOICES_SHOWN` choices in the option column."""

    MAX_CHOICES_SHOWN = 6

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        first = action.option_strings[0]
        names = [first] + [s for s in action.option_strings[1:] if s.replace("-", "_") != first.replace("-", "_")]
        if action.nargs == 0:
            return ", ".join(names)
        return ", ".join(names) + " " + self._format_args(action, self._get_default_metavar_for_optional(action))

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        placeholder = {int: "N", float: "X", positive_int: "N"}.get(action.type)
        if getattr(action.type, "__name__", "") == "string_to_bool":  # HfArgumentParser's booleans
            placeholder = "BOOL"
        return placeholder or action.dest.upper()

    def _metavar_formatter(self, action: argparse.Action, default_metavar: str):
        if action.metavar is None and action.choices is not None and len(action.choices) > self.MAX_CHOICES_SHOWN:
            return lambda size: (default_metavar,) * size
        return super()._metavar_formatter(action, default_metavar)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        takes_value = action.nargs != 0
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings
                or not takes_value):
            return text
        return text + " (default: %(default)s)"


class _ScriptHelpAndErrors:
    """Mixin for argparse parsers: ``--help`` shows the description (the script's docstring) before the usage
    line, and an error is one line on stderr (exit code 2) instead of the usage dump."""

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_text(self.description)
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        for group in self._action_groups:
            formatter.start_section(group.title)
            formatter.add_text(group.description)
            formatter.add_arguments(group._group_actions)
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class ScriptArgumentParser(_ScriptHelpAndErrors, argparse.ArgumentParser):
    """``argparse.ArgumentParser(description=doc)`` with the help layout and one-line errors of this folder."""

    def __init__(self, doc: str, **kwargs):
        super().__init__(description=doc, formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)


class TrainerScriptParser(_ScriptHelpAndErrors, HfArgumentParser):
    """``HfArgumentParser`` with the help layout and one-line errors of this folder; option names are never
    abbreviated (the scripts read some options before parsing, to choose their defaults)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces collapsed into single spaces."""
    return " ".join(str(message).split())


def positive_int(text: str) -> int:
    """argparse ``type`` of counts such as ``--threads``: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option (see :func:`set_threads`)."""
    parser.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)


@dataclass
class ThreadArguments:
    """``--threads`` for the HfArgumentParser scripts (see :func:`set_threads`)."""

    _argument_group_name = "CPU"
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"argument --threads: must be at least 1, got {self.threads}")


def trainer_argument_parser(doc: str, dataclass_types: tuple, usage: str, defaults: dict,
                            trainer_options: dict[str, str]) -> TrainerScriptParser:
    """An HfArgumentParser over the script's dataclasses and TrainingArguments (the last of ``dataclass_types``)
    whose defaults are the script's ``defaults``, so that ``--help`` shows the values a run really uses.

    ``--help`` lists the script's own options first, then the TrainingArguments named in ``trainer_options``
    (name -> help text) and hides the other TrainingArguments, which ``--help-all`` lists; all of them are
    accepted either way.
    """
    parser = TrainerScriptParser(dataclass_types, description=doc, usage=usage, epilog=HELP_ALL_EPILOG,
                                 formatter_class=HelpFormatter)
    _hide_negations(parser)
    _arrange_trainer_options(parser, trainer_options)
    set_parser_defaults(parser, defaults)
    return parser


def _hide_negations(parser: argparse.ArgumentParser) -> None:
    """Leave HfArgumentParser's ``--no_x`` options (the same as ``--x false``) out of the help; they still work."""
    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0].startswith("--no_"):
            action.help = argparse.SUPPRESS


def _arrange_trainer_options(parser: argparse.ArgumentParser, shown: dict[str, str]) -> None:
    """Move the TrainingArguments options into a group of their own, after the script's groups: those in
    ``shown`` with their help text replaced, the others hidden until ``--help-all``.

    HfArgumentParser puts dataclasses without an ``_argument_group_name`` (TrainingArguments) into argparse's
    main group, which is printed before every other group; moving them needs argparse's group lists.
    """
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    moved = [a for a in parser._optionals._group_actions if a.dest in trainer_fields]
    unknown = set(shown) - {a.dest for a in moved}
    if unknown:
        raise KeyError(f"not TrainingArguments options: {sorted(unknown)}")
    shown_group = parser.add_argument_group(TRAINER_OPTIONS_TITLE)
    other_group = parser.add_argument_group("all other TrainingArguments")
    primary = {a.dest: a for a in moved if a.option_strings[0] == f"--{a.dest}"}
    hidden = {}
    for action in moved:
        parser._optionals._group_actions.remove(action)
        if action is primary.get(action.dest) and action.dest in shown:
            action.help = shown[action.dest]
            continue
        other_group._group_actions.append(action)
        hidden[action] = action.help
        action.help = argparse.SUPPRESS
    shown_group._group_actions.extend(primary[name] for name in shown)
    parser.add_argument("--help-all", action=_HelpAllAction, hidden=hidden,
                        help="show every option, all TrainingArguments included, and exit")


class _HelpAllAction(argparse.Action):
    """``--help-all``: un-hide the TrainingArguments options that ``--help`` leaves out, print the help, exit."""

    def __init__(self, option_strings, dest, hidden: dict, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)
        self.hidden = hidden

    def __call__(self, parser, namespace, values, option_string=None):
        for action, text in self.hidden.items():
            action.help = text
        parser.print_help()
        parser.exit()


def set_parser_defaults(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """``parser.set_defaults(**defaults)``, refusing names no option has (argparse would add them to the
    namespace, which HfArgumentParser returns as an extra object)."""
    dests = {a.dest for a in parser._actions}
    unknown = set(defaults) - dests
    if unknown:
        raise KeyError(f"defaults for options the parser does not have: {sorted(unknown)}")
    parser.set_defaults(**defaults)


def parse_trainer_arguments(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """``parser.parse_args_into_dataclasses(argv)``, with unknown options and the dataclasses' own checks
    (TrainingArguments validates its values when it is built) reported as one-line errors."""
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:
        parser.error(str(err))
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser):
    """Report a ValueError raised in the block (the library rejecting an option's value, e.g. a config check) as
    a one-line error of ``parser``."""
    try:
        yield
    except ValueError as err:
        parser.error(str(err))


def check_checkpoint_folder(parser: argparse.ArgumentParser, checkpoint: str | None) -> None:
    """A one-line error unless ``--resume_from_checkpoint`` is unset or a folder (Trainer fails late otherwise)."""
    if checkpoint is not None and not os.path.isdir(checkpoint):
        parser.error(f"argument --resume_from_checkpoint: no folder {checkpoint} (expected a checkpoint-N folder "
                     "that a run with --save_strategy steps wrote into its OUTPUT_DIR)")


def flag_value(argv: list[str], name: str, default: str) -> str:
    """The value of ``--name`` in ``argv`` (``--name v`` or ``--name=v``; the last one wins), else ``default``.

    The Trainer scripts read ``--task`` / ``--dataset`` / ``--model`` with it before parsing, to pick the defaults
    of the other options."""
    value = default
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def defaults_by_choice(table: dict[str, dict], key: str, fallback) -> str:
    """How the default of option ``key`` depends on a choice, for help texts: ``"60 for induction_head, 80 for
    associative_recall"`` (one value if every choice has the same). ``table`` maps each choice to its defaults;
    a choice that does not set ``key`` uses ``fallback``."""
    by_value: dict[str, list[str]] = {}
    for choice, defaults in table.items():
        by_value.setdefault(str(defaults.get(key, fallback)), []).append(choice)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{value} for {' and '.join(choices)}" for value, choices in by_value.items())


# ----------------------------------------------------------------------------------------------------------------
# CPU threads


def idle_cores(seconds: float = 0.25) -> float | None:
    """How many CPU cores were idle over the next ``seconds`` (from /proc/stat; None where it cannot be read)."""
    def totals():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, all

    try:
        idle_before, all_before = totals()
        time.sleep(seconds)
        idle_after, all_after = totals()
    except (OSError, ValueError, IndexError):
        return None
    if all_after == all_before:
        return None
    return (os.cpu_count() or 1) * (idle_after - idle_before) / (all_after - all_before)


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads and return the number in use: ``requested`` when given; else torch's own
    setting when the environment has OMP_NUM_THREADS (the user, torchrun or accelerate chose); else the cores that
    are idle when the script starts (at least 1, at most torch's default).

    More threads than idle cores is what hurts: beside a CPU-bound process on a 2-core machine, the demo's model
    trains several times slower with 2 threads than with 1, while an idle second core speeds a width-128 language
    model up nearly twofold.
    """
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ:
        idle = idle_cores()
        if idle is not None:
            torch.set_num_threads(max(1, min(torch.get_num_threads(), int(idle + 0.3))))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------------------------------------
# runs


def classification_accuracy(eval_pred) -> dict:
    """``compute_metrics`` for Trainer: accuracy of argmax logits (batch, num_labels) vs labels (batch,)."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


TRAINING_ARG_KEYS = ("learning_rate", "weight_decay", "num_train_epochs", "per_device_train_batch_size",
                     "lr_scheduler_type", "warmup_steps")


def training_summary(training_args: TrainingArguments) -> dict:
    """The TrainingArguments a results.json records."""
    values = training_args.to_dict()
    return {k: values[k] for k in TRAINING_ARG_KEYS}


def save_results(output_dir: str, results: dict, print_keys: tuple) -> None:
    """Write ``output_dir/results.json`` (creating the folder) and print the ``print_keys`` of ``results`` as one
    JSON line."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(json.dumps({k: results[k] for k in print_keys}))


class TrainingClock(TrainerCallback, ExportableState):
    """Trainer callback that stores in every checkpoint (trainer_state.json, under ``stateful_callbacks``) the
    seconds of training so far: ``seconds_before`` (earlier processes of the run, read from the checkpoint it
    resumed from) plus this process's. Trainer's own ``train_runtime`` counts only the current process."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = seconds_before
        self._started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()
        # a checkpoint saved without this callback has no entry, which Trainer's checkpointing expects
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def seconds(self) -> float:
        """Training seconds of the run up to now."""
        return self.seconds_before + (0.0 if self._started is None else time.monotonic() - self._started)

    def state(self) -> dict:
        return {"args": {"seconds_before": self.seconds()}, "attributes": {}}


def checkpoint_training_seconds(checkpoint: str | None) -> float:
    """Seconds of training recorded by :class:`TrainingClock` in ``checkpoint``'s trainer_state.json; 0 for no
    checkpoint or one saved without the clock."""
    path = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
    if path is None or not os.path.isfile(path):
        return 0.0
    with open(path) as f:
        callbacks = json.load(f).get("stateful_callbacks") or {}
    saved = callbacks.get(TrainingClock.__name__) or {}
    if isinstance(saved, list):  # Trainer keeps a list when several callbacks share the class
        saved = saved[0] if saved else {}
    return float(saved.get("args", {}).get("seconds_before", 0.0))
