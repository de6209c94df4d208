"""S4D (diagonal S4) sequence models: layer, backbone and sequence-classification head.

Follows the S4 authors' minimal ``s4d.py`` / ``example.py``: encoder -> N x [norm -> S4D layer ->
dropout -> residual] -> pooling -> linear head. The S4D layer is a bank of H independent diagonal
SSMs run as an FFT convolution (training) or a recurrence (streaming), then GELU, dropout and a
Linear(H, 2H) + GLU position-wise output.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .configuration_s4d import S4DConfig
from .hub_utils import CodeInCheckpointMixin
from .sequence_utils import build_encoder, check_labels, classification_output, encode_inputs, run_blocks
from .ssm import (
    DiagonalSSMKernel,
    Float32LayerNorm,
    diagonal_state,
    diagonal_step,
    fft_bidirectional_conv,
    fft_causal_conv,
    no_autocast,
)


class S4DLayer(nn.Module):
    """H independent diagonal SSMs + GELU + dropout + Linear/GLU: (batch, length, H) -> same shape."""

    def __init__(self, config: S4DConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.bidirectional = config.bidirectional
        self.kernel = DiagonalSSMKernel(
            config.hidden_size,
            config.state_size,
            init=config.init,
            discretization=config.discretization,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            channels=2 if config.bidirectional else 1,
            kernel_chunk_size=config.kernel_chunk_size,
        )
        self.D = nn.Parameter(torch.randn(config.hidden_size))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.output_linear = nn.Linear(config.hidden_size, 2 * config.hidden_size)

    def ssm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """SSM part only (kernel convolution + D skip): (batch, length, H) -> (batch, length, H)."""
        u = hidden_states.transpose(1, 2)  # (B, H, L)
        kernel = self.kernel(u.shape[-1])  # (channels, H, L)
        if self.bidirectional:
            y = fft_bidirectional_conv(u, kernel[0], kernel[1], self.D)
        else:
            y = fft_causal_conv(u, kernel[0], self.D)
        return y.transpose(1, 2)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Position-wise part after the SSM: GELU, dropout, Linear(H, 2H), GLU."""
        return F.glu(self.output_linear(self.dropout(self.activation(y))), dim=-1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, length, H); attention_mask (batch, length) with 0 at padding.

        Padded positions are zeroed before the SSM so they never enter the state of valid positions.
        """
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return self.output(self.ssm(hidden_states))

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
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        with no_autocast(hidden_states.device.type):
            log_da, db, _ = self.kernel.discrete()
            u = hidden_states.transpose(1, 2).to(log_da.real.dtype)
            return diagonal_state(u, log_da, db, chunk_size=self.kernel.kernel_chunk_size)


class S4DBlock(GradientCheckpointingLayer):
    """Residual block: x + dropout(S4D(norm(x))) (pre-norm) or norm(x + dropout(S4D(x))) (post-norm)."""

    def __init__(self, config: S4DConfig):
        super().__init__()
        self.prenorm = config.prenorm
        self.norm = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer = S4DLayer(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, length, H) -> (batch, length, H)."""
        z = self.norm(hidden_states) if self.prenorm else hidden_states
        hidden_states = hidden_states + self.dropout(self.layer(z, attention_mask))
        return hidden_states if self.prenorm else self.norm(hidden_states)


class S4DPreTrainedModel(CodeInCheckpointMixin, PreTrainedModel):
    config: S4DConfig
    config_class = S4DConfig
    base_model_prefix = "s4d"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["S4DBlock"]
    _keep_in_fp32_modules_strict = ["layer.kernel"]
    _can_compile_fullgraph = False  # the FFT convolution is a graph break (ssm._fft_conv); torch.export works
    checkpoint_auto_map = {"AutoConfig": "configuration_s4d.S4DConfig", "AutoModel": "modeling_s4d.S4DModel",
                           "AutoModelForSequenceClassification": "modeling_s4d.S4DForSequenceClassification"}

    @torch.no_grad()
    def _init_weights(self, module):
        # PyTorch's default Linear/Embedding init, as in the S4 authors' code (transformers' default
        # N(0, 0.02) trains noticeably slower for these small models); the SSM keeps its structured init.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, DiagonalSSMKernel):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)
        elif isinstance(module, S4DLayer):
            init.normal_(module.D)
        else:
            super()._init_weights(module)


class S4DModel(S4DPreTrainedModel):
    """Encoder (embedding or Linear) -> S4D blocks -> final norm (pre-norm models).

    Returns ``BaseModelOutput`` with ``last_hidden_state`` of shape (batch, length, hidden_size).
    """

    def __init__(self, config: S4DConfig):
        config.validate_s4d()  # again: fields may have been changed since construction
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.layers = nn.ModuleList([S4DBlock(config) for _ in range(config.num_hidden_layers)])
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
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """
        Args:
            input_ids: (batch, length) token ids (token models).
            attention_mask: (batch, length), 1 for real positions and 0 for padding.
            inputs_embeds: (batch, length, input_size) real-valued inputs (or (batch, length,
                hidden_size) precomputed embeddings for token models).
            input_values: alias of ``inputs_embeds`` for real-valued models.
        """
        hidden_states = encode_inputs(self, input_ids, inputs_embeds, input_values, attention_mask)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states, all_hidden = run_blocks(self.layers, hidden_states, output_hidden_states, attention_mask)
        hidden_states = self.norm_f(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden)


class S4DForSequenceClassification(S4DPreTrainedModel):
    """S4DModel + pooling + Linear(hidden_size, num_labels); HF `problem_type` losses."""

    # The loss is a mean over this batch's examples: the Trainer must neither pass num_items_in_batch nor rescale
    # the loss (for models whose forward takes **kwargs it multiplies by the number of processes and skips the
    # division by gradient_accumulation_steps, which doubled the gradients under 2-process DDP or 2-step accumulation).
    accepts_loss_kwargs = False

    def __init__(self, config: S4DConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.s4d = S4DModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.s4d.encoder

    def set_input_embeddings(self, value):
        self.s4d.encoder = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Same inputs as :class:`S4DModel` plus ``labels`` (batch,) class ids (or floats for
        regression / multi-label). Returns logits (batch, num_labels)."""
        check_labels(self.config, labels, input_ids, inputs_embeds, input_values)
        outputs = self.s4d(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           input_values=input_values, output_hidden_states=output_hidden_states)
        return classification_output(self, outputs, attention_mask, labels)


# save_pretrained copies this file and its relative imports into every checkpoint (see hub_utils.py)
S4DModel.register_for_auto_class("AutoModel")
S4DForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


__all__ = ["S4DLayer", "S4DBlock", "S4DPreTrainedModel", "S4DModel", "S4DForSequenceClassification"]
