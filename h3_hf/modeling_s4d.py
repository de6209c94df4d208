"""S4D (diagonal S4) sequence models, after the S4 authors' minimal ``s4d.py`` / ``example.py``.

The S4D layer is a bank of H independent diagonal SSMs run as an FFT convolution (training) or a recurrence
(streaming), then GELU, dropout and a position-wise Linear(H, 2H) + GLU. The backbone and the classifier are the
generic ones of ``modeling_sequence.py`` with this layer.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_s4d import S4DConfig
from .diagonal_ssm import DiagonalSSMKernel
from .fft_conv import fft_bidirectional_conv, fft_causal_conv
from .modeling_sequence import (
    SequenceForClassification,
    SequenceModel,
    SequencePreTrainedModel,
    register_auto_classes,
)
from .precision import no_autocast
from .ssm_kernels import diagonal_state, diagonal_step


class S4DLayer(nn.Module):
    """H independent diagonal SSMs + GELU + dropout + Linear/GLU: (batch, length, H) -> same shape."""

    extra_inputs = ()

    def __init__(self, config: S4DConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.bidirectional = config.bidirectional
        self.kernel = DiagonalSSMKernel(config.hidden_size, config.state_size, init=config.init,
                                        discretization=config.discretization, dt_min=config.dt_min,
                                        dt_max=config.dt_max, directions=2 if config.bidirectional else 1,
                                        kernel_chunk_size=config.kernel_chunk_size)
        self.D = nn.Parameter(torch.randn(config.hidden_size))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.output_linear = nn.Linear(config.hidden_size, 2 * config.hidden_size)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """The skip D ~ N(0, 1) (the kernel initialises its own parameters)."""
        return {"D": torch.randn(self.hidden_size, dtype=self.D.dtype)}

    def ssm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """SSM part only (kernel convolution + D skip): (batch, length, H) -> (batch, length, H)."""
        u = hidden_states.transpose(1, 2)  # (B, H, L)
        kernel = self.kernel(u.shape[-1])  # (directions, H, L)
        if self.bidirectional:
            y = fft_bidirectional_conv(u, kernel[0], kernel[1], self.D)
        else:
            y = fft_causal_conv(u, kernel[0], self.D)
        return y.transpose(1, 2)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Position-wise part after the SSM: GELU, dropout, Linear(H, 2H), GLU."""
        return F.glu(self.output_linear(self.dropout(self.activation(y))), dim=-1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, length, H); attention_mask (batch, length), 0 at padding."""
        return self.output(self.ssm(mask_padding(hidden_states, attention_mask)))

    # ---- recurrent (streaming) mode: causal layers only ----

    def _require_causal(self):
        if self.bidirectional:
            raise ValueError("a bidirectional S4D layer sees the future and cannot run step by step")

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (batch, H, N/2), complex64 (complex128 for float64 parameters)."""
        self._require_causal()
        log_da, _, _ = self.kernel.discrete()
        return torch.zeros(batch_size, self.hidden_size, log_da.shape[-1], dtype=log_da.dtype,
                           device=log_da.device)

    def step(self, hidden_state: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: hidden_state (batch, H), state (batch, H, N/2) -> (output (batch, H), new state)."""
        self._require_causal()
        with no_autocast(hidden_state.device.type):
            log_da, db, c = self.kernel.discrete()
            u = hidden_state.to(log_da.real.dtype)
            state, y = diagonal_step(state, u, torch.exp(log_da), db, c[0])
            y = y + self.D.to(y.dtype) * u
        return self.output(y.to(hidden_state.dtype)), state

    def final_state(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """State after the whole sequence in closed form (no loop over time): (batch, H, N/2) complex."""
        self._require_causal()
        hidden_states = mask_padding(hidden_states, attention_mask)
        with no_autocast(hidden_states.device.type):
            log_da, db, _ = self.kernel.discrete()
            u = hidden_states.transpose(1, 2).to(log_da.real.dtype)
            return diagonal_state(u, log_da, db, chunk_size=self.kernel.kernel_chunk_size)


def mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero (batch, length, H) ``hidden_states`` where ``attention_mask`` (batch, length) is 0."""
    if attention_mask is None:
        return hidden_states
    return hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)


class S4DPreTrainedModel(SequencePreTrainedModel):
    config: S4DConfig
    config_class = S4DConfig
    base_model_prefix = "s4d"
    layer_class = S4DLayer
    _keep_in_fp32_modules_strict = ["layer.kernel"]
    _can_compile_fullgraph = False  # the FFT convolution is a graph break (fft_conv._fft_conv); torch.export works

    def init_linear(self, module: nn.Linear):
        """PyTorch's default Linear init, as in the S4 authors' code (transformers' default N(0, 0.02) trains
        noticeably slower for these small models)."""
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)


class S4DModel(S4DPreTrainedModel, SequenceModel):
    """Encoder (embedding or Linear) -> S4D blocks -> final norm (pre-norm models).

    Returns ``BaseModelOutput`` with ``last_hidden_state`` of shape (batch, length, hidden_size).
    """


class S4DForSequenceClassification(S4DPreTrainedModel, SequenceForClassification):
    """S4DModel + pooling + Linear(hidden_size, num_labels); transformers' ``problem_type`` losses."""

    backbone_class = S4DModel


register_auto_classes(S4DModel, S4DForSequenceClassification)


__all__ = ["S4DLayer", "S4DPreTrainedModel", "S4DModel", "S4DForSequenceClassification"]
