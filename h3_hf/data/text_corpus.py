"""A real text corpus every machine has offline: the Python standard library of the running interpreter.

One document per top-level module of the standard library (``sysconfig.get_paths()["stdlib"]/*.py``; 168 files,
4.7 MB of source on CPython 3.11), either its source code or its docstrings (English prose). The split is fixed by
file name: a module goes to validation when the CRC-32 of its file name is divisible by 10 (about a tenth of the
files), to training otherwise; files are read in sorted order. The corpus therefore depends only on the Python
version (figures made with it name the version).
"""

import ast
import sysconfig
import zlib
from pathlib import Path

from datasets import Dataset, DatasetDict

CORPUS_KINDS = ("source", "docstrings")


def stdlib_files() -> list[Path]:
    """The top-level ``.py`` modules of the running interpreter's standard library, sorted by name."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def is_validation_file(name: str) -> bool:
    """The fixed split: validation when crc32(file name) % 10 == 0."""
    return zlib.crc32(name.encode()) % 10 == 0


def module_docstrings(source: str) -> str:
    """The module, class and function docstrings of ``source`` joined by blank lines ('' if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    docs = (ast.get_docstring(node) for node in nodes)
    return "\n\n".join(doc for doc in docs if doc)


def load_stdlib_corpus(kind: str = "source") -> DatasetDict:
    """DatasetDict with "train" and "validation" splits of one "text" (and "file") per standard-library module.

    Args:
        kind: "source" (the code as written) or "docstrings" (the module's docstrings, English prose).
    """
    if kind not in CORPUS_KINDS:
        raise ValueError(f"kind={kind!r} is invalid: allowed values are {CORPUS_KINDS}")
    splits = {"train": {"text": [], "file": []}, "validation": {"text": [], "file": []}}
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if kind == "docstrings":
            text = module_docstrings(text)
        if text.strip():
            split = splits["validation" if is_validation_file(path.name) else "train"]
            split["text"].append(text)
            split["file"].append(path.name)
    return DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})


__all__ = ["CORPUS_KINDS", "load_stdlib_corpus", "module_docstrings", "stdlib_files", "is_validation_file"]
