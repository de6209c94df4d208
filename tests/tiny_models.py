"""Tiny configs of each model family for the tests: a pure H3, an H3 hybrid, S4D and S5; keywords override fields.

Tests that need other sizes pass them as overrides (or bind them once with ``functools.partial``), so that every
test states how its model differs from these.
"""

import torch

from h3_hf import H3Config, S4DConfig, S5Config

# width 16, 2 layers, state 8; no dropout and an unpadded vocabulary so that logits and sizes are exact
H3_BASE = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, state_size=8, num_attention_heads=2,
               embedding_dropout=0.0, pad_vocab_size_multiple=1)
S4D_BASE = dict(hidden_size=16, num_hidden_layers=2, state_size=8, dropout=0.0, num_labels=3)
S5_BASE = dict(hidden_size=16, num_hidden_layers=2, state_size=8, blocks=2, dropout=0.0, num_labels=3)


def h3_config(**overrides) -> H3Config:
    """A pure-SSM H3 language model: every layer an H3 mixer."""
    return H3Config(**{**H3_BASE, **overrides})


def h3_hybrid_config(**overrides) -> H3Config:
    """An H3 hybrid: causal attention (2 heads, no rotary) at layer 1, H3 mixers elsewhere."""
    return h3_config(**{"attn_layer_idx": [1], **overrides})


def s4d_config(**overrides) -> S4DConfig:
    """An S4D classifier of 3 labels over real-valued inputs of size 1 (``vocab_size=...`` for tokens)."""
    return S4DConfig(**{**S4D_BASE, **overrides})


def s5_config(**overrides) -> S5Config:
    """An S5 classifier of 3 labels over real-valued inputs of size 1, state 8 in 2 HiPPO-N blocks."""
    return S5Config(**{**S5_BASE, **overrides})


def build(model_class, config, seed: int = 0):
    """``model_class(config)`` in eval mode, its weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return model_class(config).eval()
