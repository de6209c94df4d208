"""Convert the official H3 checkpoints (HazyResearch/H3 ``model.pt``) to ``H3ForCausalLM``.

The released files hold a state dict (or a Lightning checkpoint wrapping one under ``state_dict``
with keys prefixed ``model.``). Keys follow ``backbone.layers.{i}.mixer...`` (new layout) or an older
post-norm layout (``s4seq.encoder.`` / ``embedding.`` prefixes and ``backbone.norm`` = the initial
LayerNorm); see spec/h3.md. Everything the config needs is inferred from tensor shapes except the
number of attention heads (taken from the released sizes, or given explicitly).

A file that is not such a checkpoint raises ``ValueError`` saying what was found and what was expected; files
are read with ``torch.load(weights_only=True)``, so a pickle that would run code when loaded is refused.
"""

import pickle
import re
from collections.abc import Mapping

import torch

from .configuration_h3 import H3Config

# hidden size -> attention heads of the released models (125M, 355M, 1.3B, 2.7B)
RELEASED_HEADS = {768: 12, 1024: 16, 2048: 16, 2560: 20}
EMBEDDING_KEY = "backbone.embeddings.word_embeddings.weight"
EXPECTED = "expected an official H3 model.pt (a state dict, or a Lightning checkpoint holding one)"


def load_official_checkpoint(path: str):
    """The object saved in ``path``, read with ``torch.load(weights_only=True)`` on the CPU.

    Raises ValueError (one line: what is wrong, what was expected) for a file that cannot be read, is not a
    PyTorch checkpoint, or is a pickle that would need more than tensors and containers to load (code execution
    is never allowed).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ValueError(f"cannot read the file ({err.strerror or err})") from err
    except pickle.UnpicklingError as err:
        raise ValueError(f"refused by torch.load(weights_only=True){_unpickler_reason(str(err))}: not a checkpoint "
                         f"of plain tensors (files that would run code when loaded are never unpickled); "
                         f"{EXPECTED}") from err
    except Exception as err:  # torch.load fails in many ways on a file that is no checkpoint
        raise ValueError(f"not a PyTorch checkpoint (torch.load failed with {type(err).__name__}); {EXPECTED}") from err


def _unpickler_reason(message: str) -> str:
    """The specific part of torch's weights-only refusal (e.g. the blocked global), as " (reason)"; "" if none."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return f" ({line.rstrip('.')})"
    return ""


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """State dict from a plain state dict or a Lightning checkpoint (``model.`` prefix removed).

    Raises ValueError when ``obj`` is not a dict or holds no tensors."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"the file holds a {type(obj).__name__}, not a dict of tensors; {EXPECTED}")
    if "pytorch-lightning_version" in obj or isinstance(obj.get("state_dict"), Mapping):
        obj = obj.get("state_dict")
        if not isinstance(obj, Mapping):
            raise ValueError(f"a Lightning checkpoint whose 'state_dict' is a {type(obj).__name__}, not a dict of "
                             f"tensors; {EXPECTED}")
        obj = {k[len("model."):] if k.startswith("model.") else k: v for k, v in obj.items()}
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"the dict holds no tensors (keys: {_some_keys(obj)}); {EXPECTED}")
    return state


def _some_keys(mapping: Mapping, count: int = 5) -> str:
    """The first ``count`` keys of ``mapping``, for error messages."""
    keys = [repr(k) for k in list(mapping)[:count]]
    return ", ".join(keys) + (", ..." if len(mapping) > count else "") if keys else "none"


def _require(state: Mapping, key: str) -> torch.Tensor:
    """``state[key]``, or a ValueError naming the missing tensor."""
    if key not in state:
        raise ValueError(f"no tensor {key!r}, which an H3 checkpoint has; {EXPECTED}")
    return state[key]


def _layer_indices(state: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m})


def to_new_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old-layout keys to the new (pre-norm) official layout; new-layout dicts pass unchanged."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("s4seq.encoder."):
            key = "backbone." + key[len("s4seq.encoder."):]
        if key.startswith("embedding."):
            key = "backbone.embeddings.word_embeddings." + key[len("embedding."):]
        renamed[key] = value
    if EMBEDDING_KEY not in renamed:
        raise ValueError(f"no H3 embedding ({EMBEDDING_KEY!r}, or 'embedding.weight' in the older layout) among its "
                         f"{len(state)} tensors (keys: {_some_keys(state)}); {EXPECTED}")
    if not _layer_indices(renamed, r"backbone\.layers\.(\d+)\."):
        raise ValueError(f"no layers (keys 'backbone.layers.N...'); {EXPECTED}")
    if not any(k.startswith("backbone.norm.") for k in renamed):
        return renamed
    # Post-norm naming: ln_0 (backbone.norm) precedes layer 0 and each layer's norm2 follows it.
    # Pre-norm equivalent: layer 0 norm1 <- ln_0; layer l norm1 <- layer l-1 norm2; layer l norm2 <-
    # layer l norm1; ln_f <- last layer's norm2.
    n_layers = max(_layer_indices(renamed, r"backbone\.layers\.(\d+)\.")) + 1
    out = {k: v for k, v in renamed.items() if not re.match(r"backbone\.(norm\.|layers\.\d+\.norm[12]\.)", k)}
    for part in ("weight", "bias"):
        out[f"backbone.layers.0.norm1.{part}"] = _require(renamed, f"backbone.norm.{part}")
        for layer in range(n_layers):
            out[f"backbone.layers.{layer}.norm2.{part}"] = _require(renamed, f"backbone.layers.{layer}.norm1.{part}")
            target = f"backbone.layers.{layer + 1}.norm1.{part}" if layer + 1 < n_layers else f"backbone.ln_f.{part}"
            out[target] = _require(renamed, f"backbone.layers.{layer}.norm2.{part}")
    return out


def infer_config(state: dict[str, torch.Tensor], num_attention_heads: int | None = None,
                 discretization: str = "bilinear", **overrides) -> H3Config:
    """H3Config from the shapes of a new-layout official state dict."""
    emb = _require(state, EMBEDDING_KEY)
    if emb.dim() != 2:
        raise ValueError(f"{EMBEDDING_KEY!r} has shape {tuple(emb.shape)}, expected (vocabulary, width); {EXPECTED}")
    vocab, d = emb.shape
    layers = _layer_indices(state, r"backbone\.layers\.(\d+)\.")
    attn = _layer_indices(state, r"backbone\.layers\.(\d+)\.mixer\.Wqkv\.weight")
    ssm = [i for i in layers if i not in attn]
    state_size = _require(state, f"backbone.layers.{ssm[0]}.mixer.ssm_k_kernel.kernel.B").shape[-1] if ssm else 64
    heads = _require(state, f"backbone.layers.{ssm[0]}.mixer.kernel.kernel.log_dt").shape[0] if ssm else d
    rotary = 0
    for i in attn:
        inv_freq = state.get(f"backbone.layers.{i}.mixer.rotary_emb.inv_freq")
        if inv_freq is not None:
            rotary = 2 * inv_freq.numel()
    if attn and num_attention_heads is None:
        if d not in RELEASED_HEADS:
            raise ValueError(f"cannot infer num_attention_heads for hidden size {d}: pass --num-attention-heads")
        num_attention_heads = RELEASED_HEADS[d]
    fields = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=len(layers), state_size=state_size,
                  ssm_head_dim=d // heads, attn_layer_idx=attn, num_attention_heads=num_attention_heads or 1,
                  rotary_emb_dim=rotary, intermediate_size=_require(state, "backbone.layers.0.mlp.fc1.weight").shape[0],
                  discretization=discretization, pad_vocab_size_multiple=1, tie_word_embeddings=True)
    fields.update(overrides)
    return H3Config(**fields)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """New-layout official keys -> ``H3ForCausalLM`` keys (tied lm_head and rotary buffers dropped)."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight" or key.endswith("rotary_emb.inv_freq"):
            continue
        key = key.replace("backbone.embeddings.word_embeddings.", "backbone.embeddings.")
        key = key.replace(".mixer.ssm_k_kernel.kernel.", ".mixer.shift_kernel.")
        key = key.replace(".mixer.kernel.kernel.", ".mixer.kernel.")
        out[key] = value.float() if value.is_floating_point() else value
    return out


def convert_checkpoint(obj: dict, num_attention_heads: int | None = None, discretization: str = "bilinear",
                       **config_overrides):
    """(H3ForCausalLM, H3Config) from a loaded official checkpoint object (see :func:`load_official_checkpoint`).

    Raises ValueError when ``obj`` is not an H3 checkpoint or its tensors do not fit the config they imply."""
    from .modeling_h3 import H3ForCausalLM

    state = to_new_layout(unwrap_checkpoint(obj))
    config = infer_config(state, num_attention_heads, discretization, **config_overrides)
    model = H3ForCausalLM(config)
    converted = convert_state_dict(state)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise ValueError(f"tensor shapes do not fit the config they imply ({' '.join(str(err).split())[:300]}); "
                         f"{EXPECTED}") from err
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the inferred config: missing "
                         f"{_some_keys(dict.fromkeys(missing))}, unexpected {_some_keys(dict.fromkeys(unexpected))}; "
                         f"{EXPECTED}")
    model.tie_weights()
    return model.eval(), config
