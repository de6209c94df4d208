"""Sequence models over one SSM layer type: a backbone and a sequence-classification head (S4D and S5 use them).

The backbone follows the S4 and S5 authors' examples:
    encoder (Embedding for tokens, Linear for real values) -> N x block -> final norm (pre-norm models)
    block: x + dropout(layer(norm(x)))  (pre-norm)  or  norm(x + dropout(layer(x)))  (post-norm)
and the head pools the sequence (masked mean or last valid position) into Linear(hidden_size, num_labels).

A family plugs in its layer, (batch, length, H) -> (batch, length, H), with this interface:
    forward(hidden_states, attention_mask=None, **inputs)     convolution or scan over the whole sequence
    initial_state(batch_size) / step(hidden_state, state, **inputs)   one position at a time (causal layers)
where ``inputs`` are the per-position extras the layer declares in ``extra_inputs`` (S5: ``timesteps``).
Padded positions (attention_mask 0) are zeroed before the layer so they never enter a valid position's state.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .hub_utils import CodeInCheckpointMixin
from .precision import Float32LayerNorm
from .validation import check_class_ids, check_ids_or_embeds, check_mask_values, is_tracing


class SequenceBlock(GradientCheckpointingLayer):
    """Residual block around one SSM layer: (batch, length, H) -> (batch, length, H)."""

    def __init__(self, config, layer: nn.Module):
        super().__init__()
        self.prenorm = config.prenorm
        self.norm = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer = layer
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs) -> torch.Tensor:
        z = self.norm(hidden_states) if self.prenorm else hidden_states
        hidden_states = hidden_states + self.dropout(self.layer(z, attention_mask, **inputs))
        return hidden_states if self.prenorm else self.norm(hidden_states)


class SequencePreTrainedModel(CodeInCheckpointMixin, PreTrainedModel):
    """Base of a family's backbone and head. A family sets ``config_class``, ``base_model_prefix``,
    ``layer_class`` and its weight initialisation (``init_linear``)."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SequenceBlock"]
    layer_class: type[nn.Module]

    def __init__(self, config, *args, **kwargs):
        config.validate()  # fields may have been changed since the config was built
        super().__init__(config, *args, **kwargs)

    def init_linear(self, module: nn.Linear):
        """The family's initialisation of Linear layers."""
        raise NotImplementedError

    @torch.no_grad()
    def _init_weights(self, module):
        """The family's Linear init, N(0, 1) embeddings (as both authors' code) and the SSM's structured init
        (modules with ``initial_values()``)."""
        if isinstance(module, nn.Linear):
            self.init_linear(module)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif hasattr(module, "initial_values"):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)
        else:
            super()._init_weights(module)


def check_sequence_inputs(config, input_ids, inputs_embeds, attention_mask, embed_dtype, inputs: dict,
                          extra_inputs: tuple[str, ...]) -> tuple[int, int]:
    """Validate a backbone's inputs before any work; returns (batch, length). ValueError naming the argument."""
    if input_ids is not None and config.vocab_size is None:
        raise ValueError(
            f"input_ids given but this model takes real-valued inputs_embeds of shape (batch, length, "
            f"{config.input_size}) (config.vocab_size is None)")
    embed_size = config.input_size if config.vocab_size is None else config.hidden_size
    shape = check_ids_or_embeds(input_ids, inputs_embeds, config.vocab_size, embed_size, embed_dtype)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have shape "
                             f"{shape}")
        check_mask_values(attention_mask)
    for name, value in inputs.items():
        if value is not None and name not in extra_inputs:
            raise ValueError(f"{name} is not an input of a {config.model_type} model (it takes "
                             f"{', '.join(extra_inputs) or 'no per-position inputs'} besides the sequence)")
    timesteps = inputs.get("timesteps")
    if timesteps is not None:
        if tuple(timesteps.shape) != shape:
            raise ValueError(f"timesteps must have shape (batch, length) = {shape}, got {tuple(timesteps.shape)}")
        if not timesteps.is_floating_point():
            raise ValueError(f"timesteps must be a floating-point tensor, got {timesteps.dtype}")
        if not is_tracing(timesteps) and (not torch.isfinite(timesteps).all() or (timesteps <= 0).any()):
            raise ValueError("timesteps must be finite and > 0 (intervals t_k - t_(k-1)); got values in "
                             f"[{float(timesteps.min())}, {float(timesteps.max())}] or non-finite ones")
    return shape


class SequenceModel(SequencePreTrainedModel):
    """Encoder -> blocks of ``layer_class`` -> final norm. ``last_hidden_state`` (batch, length, hidden_size)."""

    def __init__(self, config):
        super().__init__(config)
        if config.vocab_size is not None:
            self.encoder = nn.Embedding(config.vocab_size, config.hidden_size)
        else:
            self.encoder = nn.Linear(config.input_size, config.hidden_size)
        self.layers = nn.ModuleList([SequenceBlock(config, self.layer_class(config))
                                     for _ in range(config.num_hidden_layers)])
        self.norm_f = (Float32LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.prenorm
                       else nn.Identity())
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder

    def set_input_embeddings(self, value):
        self.encoder = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """
        Args:
            input_ids: (batch, length) token ids (token models).
            attention_mask: (batch, length), 1 for real positions and 0 for padding.
            inputs_embeds: (batch, length, input_size) real-valued inputs (or (batch, length, hidden_size)
                precomputed embeddings for token models); ``input_values`` is an alias.
            timesteps: (batch, length) positive intervals between consecutive samples (S5 only; irregular
                sampling): position k is discretised with its step times ``timesteps[:, k]``.
            output_hidden_states: None takes the config's value; the encoder output and each block's output.
        """
        if input_values is not None:
            if inputs_embeds is not None:
                raise ValueError("pass inputs_embeds or input_values, not both")
            inputs_embeds = input_values
        layer_inputs = {"timesteps": timesteps}
        check_sequence_inputs(self.config, input_ids, inputs_embeds, attention_mask, self.encoder.weight.dtype,
                              layer_inputs, self.layer_class.extra_inputs)
        layer_inputs = {name: value for name, value in layer_inputs.items() if value is not None}
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        if input_ids is not None:
            hidden_states = self.encoder(input_ids)
        else:
            hidden_states = self.encoder(inputs_embeds) if self.config.vocab_size is None else inputs_embeds
        all_hidden = (hidden_states,) if output_hidden_states else None
        for block in self.layers:
            hidden_states = block(hidden_states, attention_mask, **layer_inputs)
            if output_hidden_states:
                all_hidden += (hidden_states,)
        return BaseModelOutput(last_hidden_state=self.norm_f(hidden_states), hidden_states=all_hidden)


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


def check_labels(config, labels: torch.Tensor, batch: int):
    """``labels`` before any work: the shape and dtype transformers' loss needs for the config's ``problem_type``
    (inferred as the loss infers it when None) and, for classes, ids in [0, num_labels) or -100 (ignored)."""
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


class SequenceForClassification(SequencePreTrainedModel):
    """Backbone (``backbone_class``, stored under ``base_model_prefix``) + pooling + Linear(hidden_size,
    num_labels), with transformers' ``problem_type`` losses. Logits (batch, num_labels)."""

    backbone_class: type[SequenceModel]
    # The loss is a mean over this batch's examples: the Trainer must neither pass num_items_in_batch nor rescale
    # the loss (for models whose forward takes **kwargs it multiplies the loss by the number of processes and skips
    # the division by gradient_accumulation_steps, which would double the gradients under 2-process DDP or 2-step
    # accumulation).
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.base_model.encoder

    def set_input_embeddings(self, value):
        self.base_model.encoder = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """The backbone's inputs plus ``labels`` (batch,) class ids (or floats for regression / multi-label)."""
        if labels is not None:
            given = next((x for x in (input_ids, inputs_embeds, input_values) if x is not None), labels)
            check_labels(self.config, labels, given.shape[0])
        outputs = self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                  input_values=input_values, timesteps=timesteps,
                                  output_hidden_states=output_hidden_states)
        logits = self.score(pool_sequence(outputs.last_hidden_state, attention_mask, self.config.pooling))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def register_auto_classes(model_class: type[SequenceModel], classifier_class: type[SequenceForClassification]):
    """Register a family's backbone and classifier for ``AutoModel`` / ``AutoModelForSequenceClassification``:
    ``save_pretrained`` then copies the modeling code into every checkpoint, and the checkpoint's ``auto_map`` names
    the config and both classes (see hub_utils.py), so it loads with ``trust_remote_code`` without this package."""
    model_class.register_for_auto_class("AutoModel")
    classifier_class.register_for_auto_class("AutoModelForSequenceClassification")

    def where(cls):  # "modeling_s4d.S4DModel"
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    auto_map = {"AutoConfig": where(model_class.config_class), "AutoModel": where(model_class),
                "AutoModelForSequenceClassification": where(classifier_class)}
    model_class.checkpoint_auto_map = classifier_class.checkpoint_auto_map = auto_map


__all__ = ["SequenceBlock", "SequencePreTrainedModel", "SequenceModel", "SequenceForClassification",
           "register_auto_classes"]
