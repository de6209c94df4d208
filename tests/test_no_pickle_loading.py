"""Safe loading across the package, the scripts and the tests: torch.load only with weights_only=True, no pickle."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files():
    for folder in ("h3_hf", "scripts", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(base, f) for f in files if f.endswith(".py"))


def test_nothing_unpickles_untrusted_files():
    """torch.load only with weights_only=True; no pickle / dill / joblib loading anywhere in the package,
    the scripts or the tests."""
    offenders = []
    for path in python_files():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                if owner == "torch" and node.func.attr == "load":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    if not safe:
                        offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if owner in ("pickle", "dill", "joblib", "cloudpickle") and node.func.attr in ("load", "loads"):
                    offenders.append(f"{path}:{node.lineno} {owner}.{node.func.attr}")
    assert not offenders, offenders
    assert any("convert_h3_original_checkpoint.py" in p for p in python_files())  # the converter was scanned
