"""Datasets: sequential digits, ListOps (and the H3 synthetic language tasks)."""

from .collators import PaddingCollator
from .digits import load_irregular_digits, load_sequential_digits
from .listops import VOCAB as LISTOPS_VOCAB
from .listops import evaluate_listops, generate_listops, listops_tokenizer, load_listops
from .synthetics import (
    SYNTHETIC_TASKS,
    load_synthetic,
    load_synthetic_from_disk,
    save_synthetic,
    synthetic_parameters,
    synthetic_tokenizer,
)

__all__ = [
    "PaddingCollator",
    "load_sequential_digits",
    "load_irregular_digits",
    "load_listops",
    "generate_listops",
    "evaluate_listops",
    "LISTOPS_VOCAB",
    "listops_tokenizer",
    "SYNTHETIC_TASKS",
    "load_synthetic",
    "load_synthetic_from_disk",
    "save_synthetic",
    "synthetic_parameters",
    "synthetic_tokenizer",
]
