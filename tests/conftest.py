"""Settings that scripts run in-process change for the whole test session, restored after every test."""

import pytest
import torch
from transformers.utils import logging


@pytest.fixture(autouse=True)
def keep_threads_and_log_level():
    """The training scripts set torch's threads (--threads) and transformers' log level (--log_level)."""
    threads, verbosity = torch.get_num_threads(), logging.get_verbosity()
    yield
    torch.set_num_threads(threads)
    logging.set_verbosity(verbosity)
