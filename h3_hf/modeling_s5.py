"""S5 sequence models: layer, backbone and sequence-classification head.

Follows the S5 authors' ``SequenceLayer``: encoder -> N x [norm -> S5 SSM -> GELU/GLU -> dropout ->
residual] -> pooling -> linear head. The S5 SSM is one MIMO diagonal SSM of P states over the H
features, run in the time domain with a parallel associative scan; that is what lets it take a
step size per position (``timesteps``, irregular sampling).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .configuration_s5 import S5Config
from .hub_utils import CodeInCheckpointMixin
from .sequence_utils import build_encoder, check_labels, classification_output, encode_inputs, run_blocks
from .ssm import S5SSM, Float32LayerNorm


class S5Layer(nn.Module):
    """S5 SSM + activation (GELU / GLU variants) + dropout: (batch, length, H) -> same shape."""

    def __init__(self, config: S5Config):
        super().__init__()
        self.activation = config.activation
        self.ssm = S5SSM(config.hidden_size, config.state_size, blocks=config.blocks, conj_sym=config.conj_sym,
                         clip_eigs=config.clip_eigs, discretization=config.discretization, C_init=config.C_init,
                         dt_min=config.dt_min, dt_max=config.dt_max, step_rescale=config.step_rescale,
                         bidirectional=config.bidirectional, scan_chunk_size=config.scan_chunk_size)
        self.dropout = nn.Dropout(config.dropout)
        if config.activation in ("half_glu1", "half_glu2"):
            self.output_linear = nn.Linear(config.hidden_size, config.hidden_size)
        elif config.activation == "full_glu":
            self.output_linear = nn.Linear(config.hidden_size, 2 * config.hidden_size)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Position-wise part after the SSM (S5's activations), y (..., H)."""
        g = self.dropout(F.gelu(y))
        if self.activation == "gelu":
            return g
        if self.activation == "full_glu":
            return F.glu(self.output_linear(g), dim=-1)
        gate = torch.sigmoid(self.output_linear(g))
        return g * gate if self.activation == "half_glu1" else y * gate

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, length, H); attention_mask (batch, length), 0 at padding (zeroed before
        the SSM so it never enters a valid position's state); timesteps (batch, length) > 0."""
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            if timesteps is not None:  # the backward scan reads timesteps[:, k + 1]: after the end it must be 1,
                timesteps = timesteps.masked_fill(~attention_mask.bool(), 1.0)  # as for the sequence alone
        y = self.ssm(hidden_states, timesteps).to(hidden_states.dtype)
        return self.output(y)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (batch, P_h), complex."""
        return self.ssm.initial_state(batch_size)

    def step(self, hidden_state: torch.Tensor, state: torch.Tensor, timestep: torch.Tensor | None = None):
        """One position: hidden_state (batch, H), state (batch, P_h), timestep (batch,) -> (output, state)."""
        y, state = self.ssm.step(hidden_state, state, timestep)
        return self.output(y.to(hidden_state.dtype)), state


class S5Block(GradientCheckpointingLayer):
    """Residual block: x + dropout(S5(norm(x))) (pre-norm) or norm(x + dropout(S5(x))) (post-norm)."""

    def __init__(self, config: S5Config):
        super().__init__()
        self.prenorm = config.prenorm
        self.norm = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer = S5Layer(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, length, H) -> (batch, length, H)."""
        z = self.norm(hidden_states) if self.prenorm else hidden_states
        hidden_states = hidden_states + self.dropout(self.layer(z, attention_mask, timesteps))
        return hidden_states if self.prenorm else self.norm(hidden_states)


class S5PreTrainedModel(CodeInCheckpointMixin, PreTrainedModel):
    config: S5Config
    config_class = S5Config
    base_model_prefix = "s5"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["S5Block"]
    _can_compile_fullgraph = True  # torch.compile(fullgraph=True) traces the whole forward (tested)
    checkpoint_auto_map = {"AutoConfig": "configuration_s5.S5Config", "AutoModel": "modeling_s5.S5Model",
                           "AutoModelForSequenceClassification": "modeling_s5.S5ForSequenceClassification"}
    _keep_in_fp32_modules_strict = ["ssm"]

    @torch.no_grad()
    def _init_weights(self, module):
        """lecun-normal Linear weights and N(0, 1) embeddings (as the S5 code); structured SSM init."""
        if isinstance(module, nn.Linear):
            std = module.in_features ** -0.5 / 0.87962566103423978  # so the truncated normal has std 1/sqrt(fan_in)
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, S5SSM):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)
        else:
            super()._init_weights(module)


class S5Model(S5PreTrainedModel):
    """Encoder (embedding or Linear) -> S5 blocks -> final norm (pre-norm models).

    Returns ``BaseModelOutput`` with ``last_hidden_state`` of shape (batch, length, hidden_size).
    """

    def __init__(self, config: S5Config):
        config.validate_s5()  # again: fields may have been changed since construction
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.layers = nn.ModuleList([S5Block(config) for _ in range(config.num_hidden_layers)])
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
            inputs_embeds / input_values: (batch, length, input_size) real-valued inputs.
            timesteps: (batch, length) positive intervals between consecutive samples (irregular
                sampling); position k is discretised with its step times ``timesteps[:, k]``.
        """
        hidden_states = encode_inputs(self, input_ids, inputs_embeds, input_values, attention_mask, timesteps)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states, all_hidden = run_blocks(self.layers, hidden_states, output_hidden_states, attention_mask,
                                               timesteps)
        hidden_states = self.norm_f(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden)


class S5ForSequenceClassification(S5PreTrainedModel):
    """S5Model + pooling + Linear(hidden_size, num_labels); HF `problem_type` losses."""

    # The loss is a mean over this batch's examples: the Trainer must neither pass num_items_in_batch nor rescale
    # the loss (for models whose forward takes **kwargs it multiplies by the number of processes and skips the
    # division by gradient_accumulation_steps, which doubled the gradients under 2-process DDP or 2-step accumulation).
    accepts_loss_kwargs = False

    def __init__(self, config: S5Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.s5 = S5Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.s5.encoder

    def set_input_embeddings(self, value):
        self.s5.encoder = value

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
        """Same inputs as :class:`S5Model` plus ``labels`` (batch,). Returns logits (batch, num_labels)."""
        check_labels(self.config, labels, input_ids, inputs_embeds, input_values)
        outputs = self.s5(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                          input_values=input_values, timesteps=timesteps, output_hidden_states=output_hidden_states)
        return classification_output(self, outputs, attention_mask, labels)


# save_pretrained copies this file and its relative imports into every checkpoint (see hub_utils.py)
S5Model.register_for_auto_class("AutoModel")
S5ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


__all__ = ["S5Layer", "S5Block", "S5PreTrainedModel", "S5Model", "S5ForSequenceClassification"]
