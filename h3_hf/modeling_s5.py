"""S5 sequence models, after the S5 authors' ``SequenceLayer``.

The S5 SSM is one MIMO diagonal SSM of P states over the H features (block HiPPO-N initialisation), run in the
time domain with a parallel associative scan; that is what lets it take a step size per position
(``timesteps``, irregular sampling). The S5 layer is that SSM followed by GELU / GLU and dropout; the backbone and
the classifier are the generic ones of ``modeling_sequence.py`` with this layer.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_s5 import S5Config
from .modeling_sequence import (
    SequenceForClassification,
    SequenceModel,
    SequencePreTrainedModel,
    register_auto_classes,
)
from .s5_ssm import S5SSM


class S5Layer(nn.Module):
    """S5 SSM + activation (GELU / GLU variants) + dropout: (batch, length, H) -> same shape."""

    extra_inputs = ("timesteps",)

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

    def step(self, hidden_state: torch.Tensor, state: torch.Tensor, timesteps: torch.Tensor | None = None):
        """One position: hidden_state (batch, H), state (batch, P_h), timesteps (batch,) -> (output, state)."""
        y, state = self.ssm.step(hidden_state, state, timesteps)
        return self.output(y.to(hidden_state.dtype)), state


class S5PreTrainedModel(SequencePreTrainedModel):
    config: S5Config
    config_class = S5Config
    base_model_prefix = "s5"
    layer_class = S5Layer
    _keep_in_fp32_modules_strict = ["ssm"]
    _can_compile_fullgraph = True  # torch.compile(fullgraph=True) traces the whole forward (tested)

    def init_linear(self, module: nn.Linear):
        """lecun-normal weights and zero biases, as the S5 code."""
        std = module.in_features ** -0.5 / 0.87962566103423978  # so the truncated normal has std 1/sqrt(fan_in)
        init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            init.zeros_(module.bias)


class S5Model(S5PreTrainedModel, SequenceModel):
    """Encoder (embedding or Linear) -> S5 blocks -> final norm (pre-norm models); ``last_hidden_state`` (batch,
    length, hidden_size). Irregularly sampled sequences pass their intervals as ``timesteps`` (batch, length)."""


class S5ForSequenceClassification(S5PreTrainedModel, SequenceForClassification):
    """S5Model + pooling + Linear(hidden_size, num_labels); transformers' ``problem_type`` losses."""

    backbone_class = S5Model


register_auto_classes(S5Model, S5ForSequenceClassification)


__all__ = ["S5Layer", "S5PreTrainedModel", "S5Model", "S5ForSequenceClassification"]
