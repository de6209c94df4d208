"""S4D configuration."""

from transformers.configuration_utils import PreTrainedConfig

from .ssm_init import DIAGONAL_INITS
from .ssm_kernels import DISCRETIZATIONS
from .validation import require, require_choice, require_classifier, require_common, require_positive, strict_config


@strict_config
class S4DConfig(PreTrainedConfig):
    r"""Configuration of an S4D (diagonal S4) sequence model.

    Inputs are either tokens (set ``vocab_size``; the encoder is an embedding) or real-valued
    sequences (set ``input_size``; the encoder is a Linear layer applied to ``inputs_embeds`` of shape
    (batch, length, input_size)). Exactly one of the two must be set.

    Args:
        vocab_size: number of token ids, or None for real-valued inputs.
        input_size: features per position of real-valued inputs, or None for tokens (defaults to 1
            when ``vocab_size`` is not set either).
        hidden_size: model width H (number of independent SSM channels).
        num_hidden_layers: number of residual S4D blocks.
        state_size: real state size N per channel (N/2 complex modes are stored); positive, even.
        init: initialisation of A: "inv" (S4D-Inv), "lin" (S4D-Lin) or "legs" (S4D-LegS).
        discretization: "zoh" or "bilinear".
        dt_min, dt_max: range of the log-uniform initial step sizes, 0 < dt_min <= dt_max.
        bidirectional: add an anti-causal kernel (sees the future; cannot stream).
        dropout: dropout after the SSM activation and after each block.
        prenorm: LayerNorm before each block (and a final norm) instead of after.
        pooling: "mean" over valid positions or "last" valid position.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: std of the normal init of Linear/Embedding weights.
        kernel_chunk_size: positions per block of the blocked kernel and prefill-state products (None:
            ceil(sqrt(L)), which keeps their memory O(H N sqrt(L))); a speed knob, results do not change.
    """

    model_type = "s4d"

    vocab_size: int | None = None
    input_size: int | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 4
    state_size: int = 64
    init: str = "inv"
    discretization: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    bidirectional: bool = False
    dropout: float = 0.1
    prenorm: bool = True
    pooling: str = "mean"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    kernel_chunk_size: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.vocab_size is None and self.input_size is None:
            self.input_size = 1  # default: a real-valued scalar sequence (e.g. pixels)
        super().__post_init__(**kwargs)

    def validate_s4d(self):
        """Every field (types are checked by ``strict``); ValueError naming the field, its value and what is
        allowed. Run by ``validate()``: at construction and when a model is built."""
        require_classifier(self)
        require_positive(self, "hidden_size", "num_hidden_layers")
        require_positive(self, "kernel_chunk_size", optional=True)
        require(self, self.state_size > 0 and self.state_size % 2 == 0, "state_size",
                "must be a positive even integer (N/2 complex modes are stored)")
        require_choice(self, "init", DIAGONAL_INITS)
        require_choice(self, "discretization", DISCRETIZATIONS)
        require_common(self, ("dropout",), "layer_norm_eps")


__all__ = ["S4DConfig"]
