"""Run transformers' own common model tests (ModelTesterMixin, GenerationTesterMixin, ConfigTester) on h3-hf.

transformers ships ``tests/test_modeling_common.py`` and ``tests/test_configuration_common.py`` in its sdist, but not
the helpers they import (``tests/generation/test_utils.py``, ``tests/exporters/test_export.py`` and
``tests/utils/test_configuration_utils.py``). This script

1. downloads the sdist of the *installed* transformers version into ``.conformance_cache/`` (once) and unpacks its
   ``tests/`` into ``.conformance_cache/<version>/tests`` as the importable package ``tests``;
2. takes ``generation/`` and ``exporters/`` from a transformers checkout when ``TRANSFORMERS_TESTS_DIR`` points at
   its ``tests/`` folder; otherwise writes empty stand-in mixins and says loudly that those tests did not run;
3. installs ``parameterized`` if it is missing, and runs pytest on ``conformance/test_*_common.py`` with the
   package on ``PYTHONPATH``. Extra arguments go to pytest (e.g. ``-k generate``, ``-x``, ``--tb=line``).

Usage: ``.venv/bin/python conformance/run.py [pytest args]``; ``RUN_SLOW=1`` also runs transformers' slow tests
(the export tests among them).
"""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".conformance_cache"
HERE = Path(__file__).resolve().parent

GENERATION_STANDIN = '''"""Stand-in from conformance/run.py: transformers' GenerationTesterMixin is NOT available."""


class GenerationTesterMixin:
    """Empty: no generate() test ran (set TRANSFORMERS_TESTS_DIR to a transformers checkout's tests/)."""

    all_generative_model_classes = ()
'''

EXPORT_STANDIN = '''"""Stand-in from conformance/run.py: transformers' ExportTesterMixin is NOT available."""


class ExportTesterMixin:
    """Empty: no export test ran (set TRANSFORMERS_TESTS_DIR to a transformers checkout's tests/)."""


class ExportGenerateTesterMixin(ExportTesterMixin):
    """Empty, as ExportTesterMixin."""
'''

# tests/utils/test_configuration_utils.py imports modules from the repository's utils/ folder (outside tests/), so
# only its ``config_common_kwargs`` (what test_configuration_common.py reads) is written; this copy is used when no
# checkout is given (it is the dict of transformers 5.x).
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


def banner(message: str) -> None:
    line = "!" * 100
    print(f"\n{line}\n{message}\n{line}\n", flush=True)


def download_sdist(version: str) -> Path:
    """The sdist of transformers ``version`` in the cache (downloaded with pip once)."""
    CACHE.mkdir(exist_ok=True)
    found = sorted(CACHE.glob(f"transformers-{version}.tar.gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
                        f"transformers=={version}", "-d", str(CACHE)], check=True)
        found = sorted(CACHE.glob(f"transformers-{version}.tar.gz"))
    if not found:
        sys.exit(f"pip download did not produce {CACHE}/transformers-{version}.tar.gz")
    return found[0]


def unpack_tests(sdist: Path, version: str) -> Path:
    """Fresh ``<cache>/<version>/tests`` from the sdist's tests/ folder, made a regular package."""
    root = CACHE / version
    tests = root / "tests"
    shutil.rmtree(tests, ignore_errors=True)
    prefix = f"transformers-{version}/tests/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            target = tests / member.name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    if not (tests / "test_modeling_common.py").exists():
        sys.exit(f"{sdist} has no tests/test_modeling_common.py")
    (tests / "__init__.py").touch()
    return root


def config_common_kwargs_source(checkout: Path | None) -> str:
    """The ``config_common_kwargs = {...}`` assignment of the checkout's tests/utils/test_configuration_utils.py,
    or of the built-in copy."""
    path = checkout / "utils" / "test_configuration_utils.py" if checkout else None
    if path and path.exists():
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "config_common_kwargs"
                                                    for t in node.targets):
                return ast.get_source_segment(source, node) + "\n"
    return f"config_common_kwargs = {CONFIG_COMMON_KWARGS!r}\n"


def add_helpers(tests: Path, checkout: Path | None) -> bool:
    """generation/, exporters/ and utils/test_configuration_utils.py; returns True when the real mixins are used."""
    for sub in ("generation", "exporters", "utils"):
        (tests / sub).mkdir(exist_ok=True)
        (tests / sub / "__init__.py").touch()
    real = checkout is not None
    if real:
        for sub in ("generation", "exporters"):
            for source in (checkout / sub).glob("*.py"):
                shutil.copy(source, tests / sub / source.name)
        for needed in ("generation/test_utils.py", "exporters/test_export.py"):
            if not (tests / needed).exists():
                sys.exit(f"TRANSFORMERS_TESTS_DIR={checkout} has no {needed}")
    else:
        (tests / "generation" / "test_utils.py").write_text(GENERATION_STANDIN)
        (tests / "exporters" / "test_export.py").write_text(EXPORT_STANDIN)
    (tests / "utils" / "test_configuration_utils.py").write_text(
        '"""Written by conformance/run.py: config_common_kwargs only."""\n\n' + config_common_kwargs_source(checkout))
    return real


def main(pytest_args: list[str]) -> int:
    import transformers

    version = transformers.__version__
    if importlib.util.find_spec("parameterized") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "parameterized"], check=True)
    checkout = os.environ.get("TRANSFORMERS_TESTS_DIR")
    checkout = Path(checkout).resolve() if checkout else None
    root = unpack_tests(download_sdist(version), version)
    real = add_helpers(root / "tests", checkout)
    if not real:
        banner("TRANSFORMERS_TESTS_DIR is not set: GenerationTesterMixin and ExportTesterMixin are EMPTY STAND-INS.\n"
               "No generate() and no export test of transformers ran. Point TRANSFORMERS_TESTS_DIR at the tests/\n"
               "folder of a transformers checkout (ideally at the installed version's tag) to run them.")
    else:
        print(f"transformers {version}: sdist tests + generation/ and exporters/ from {checkout}", flush=True)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    files = sorted(str(p) for p in HERE.glob("test_*_common.py"))
    command = [sys.executable, "-m", "pytest", *files, "-c", str(HERE / "pytest.ini"), "--rootdir", str(REPO),
               "-p", "no:cacheprovider", "-rfEs", *pytest_args]
    code = subprocess.run(command, cwd=REPO, env=env).returncode
    if not real:
        banner("REMINDER: generate() and export tests were NOT run (empty stand-in mixins).")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
