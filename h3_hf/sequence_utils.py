"""Input validation and pooling shared by the sequence models (no model-specific imports)."""

import torch


def check_sequence_inputs(config, input_ids, inputs_embeds, attention_mask, embed_dtype, embed_size):
    """Validate model inputs before any work; returns (batch, length). Raises ValueError naming the argument."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if config.vocab_size is None:
            raise ValueError(
                f"input_ids given but this model takes real-valued inputs_embeds of shape (batch, length, "
                f"{config.input_size}) (config.vocab_size is None)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={config.vocab_size}), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        shape = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embed_size:
            raise ValueError(f"inputs_embeds must have shape (batch, length, {embed_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be a floating-point tensor, got {inputs_embeds.dtype}")
        if inputs_embeds.dtype != embed_dtype and not torch.is_autocast_enabled(inputs_embeds.device.type):
            raise ValueError(f"inputs_embeds has dtype {inputs_embeds.dtype} but the model's parameters are "
                             f"{embed_dtype}; cast the inputs (or the model) explicitly")
        shape = tuple(inputs_embeds.shape[:2])
    if shape[1] == 0:
        raise ValueError("the input sequences are empty (length 0)")
    if attention_mask is not None and tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have shape {shape}")
    return shape


def config_embed_size(config) -> int:
    """Last dim of ``inputs_embeds``: input_size for real-valued models, hidden_size for token models."""
    return config.input_size if config.vocab_size is None else config.hidden_size


def pool_sequence(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pool (batch, length, H) -> (batch, H): masked mean, or the last valid position."""
    if attention_mask is None:
        return hidden_states.mean(dim=1) if pooling == "mean" else hidden_states[:, -1]
    mask = attention_mask.to(hidden_states.dtype)
    if pooling == "mean":
        return (hidden_states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (attention_mask.bool() * (positions + 1)).argmax(dim=1)  # last index whose mask is 1
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
