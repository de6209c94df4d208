"""Input validation, encoders, pooling and heads shared by the sequence classifiers (S4D, S5)."""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .validation import check_class_ids, check_ids_or_embeds, check_mask_values, is_tracing


def check_sequence_inputs(config, input_ids, inputs_embeds, attention_mask, timesteps, embed_dtype, embed_size):
    """Validate model inputs before any work; returns (batch, length). Raises ValueError naming the argument."""
    if input_ids is not None and config.vocab_size is None:
        raise ValueError(
            f"input_ids given but this model takes real-valued inputs_embeds of shape (batch, length, "
            f"{config.input_size}) (config.vocab_size is None)")
    shape = check_ids_or_embeds(input_ids, inputs_embeds, config.vocab_size, embed_size, embed_dtype)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have shape "
                             f"{shape}")
        check_mask_values(attention_mask)
    if timesteps is not None:
        if tuple(timesteps.shape) != shape:
            raise ValueError(f"timesteps must have shape (batch, length) = {shape}, got {tuple(timesteps.shape)}")
        if not timesteps.is_floating_point():
            raise ValueError(f"timesteps must be a floating-point tensor, got {timesteps.dtype}")
        if not is_tracing(timesteps) and (not torch.isfinite(timesteps).all() or (timesteps <= 0).any()):
            raise ValueError("timesteps must be finite and > 0 (intervals t_k - t_(k-1)); got values in "
                             f"[{float(timesteps.min())}, {float(timesteps.max())}] or non-finite ones")
    return shape


def check_labels(config, labels, *inputs):
    """``labels`` of a classification head, before any work: the shape and dtype transformers' loss needs for the
    config's ``problem_type`` (inferred as the loss infers it when None) and, for classes, ids in [0, num_labels)
    or -100 (ignored). The batch is that of the first given tensor of ``inputs``."""
    if labels is None:
        return
    batch = next((x.shape[0] for x in inputs if x is not None), labels.shape[0])
    n, integer = config.num_labels, labels.dtype in (torch.int64, torch.int32)
    problem = config.problem_type or ("regression" if n == 1 else
                                      "single_label_classification" if integer else "multi_label_classification")
    shapes = [(batch, n)] if problem == "multi_label_classification" or (problem == "regression" and n > 1) \
        else [(batch,), (batch, 1)]
    if tuple(labels.shape) not in shapes:
        raise ValueError(f"labels must have shape {' or '.join(map(str, shapes))} for {problem} with "
                         f"num_labels={n}, got {tuple(labels.shape)}")
    if problem == "single_label_classification":
        check_class_ids("labels", labels, n)
    elif not labels.is_floating_point():
        raise ValueError(f"labels must be a floating-point tensor for {problem}, got {labels.dtype}")


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


def encode_inputs(model, input_ids, inputs_embeds, input_values, attention_mask, timesteps=None):
    """Checked encoder output (batch, length, hidden) of a token or real-valued sequence model.

    ``model`` has ``config`` and ``encoder`` (an Embedding for tokens, a Linear for real values);
    ``input_values`` is an alias of ``inputs_embeds``; ``timesteps`` (S5) are only checked here.
    """
    if input_values is not None:
        if inputs_embeds is not None:
            raise ValueError("pass inputs_embeds or input_values, not both")
        inputs_embeds = input_values
    check_sequence_inputs(model.config, input_ids, inputs_embeds, attention_mask, timesteps, model.encoder.weight.dtype,
                          config_embed_size(model.config))
    if input_ids is not None:
        return model.encoder(input_ids)
    return model.encoder(inputs_embeds) if model.config.vocab_size is None else inputs_embeds


def build_encoder(config) -> nn.Module:
    """Embedding(vocab_size, H) for token models, Linear(input_size, H) for real-valued ones."""
    if config.vocab_size is not None:
        return nn.Embedding(config.vocab_size, config.hidden_size)
    return nn.Linear(config.input_size, config.hidden_size)


def run_blocks(blocks, hidden_states: torch.Tensor, output_hidden_states: bool, *args):
    """Apply residual ``blocks`` in order; returns (batch, length, H) and the per-block states (or None)."""
    all_hidden = (hidden_states,) if output_hidden_states else None
    for block in blocks:
        hidden_states = block(hidden_states, *args)
        if output_hidden_states:
            all_hidden += (hidden_states,)
    return hidden_states, all_hidden


def classification_output(model, outputs, attention_mask, labels) -> SequenceClassifierOutput:
    """Pool the backbone ``outputs``, apply ``model.score`` and the HF ``problem_type`` loss."""
    pooled = pool_sequence(outputs.last_hidden_state, attention_mask, model.config.pooling)
    logits = model.score(pooled)
    loss = None
    if labels is not None:
        loss = model.loss_function(labels=labels, pooled_logits=logits, config=model.config)
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
