"""S5 configuration."""

from transformers.configuration_utils import PreTrainedConfig

from .ssm_init import S5_C_INITS
from .ssm_kernels import DISCRETIZATIONS
from .validation import require, require_choice, require_classifier, require_common, require_positive, strict_config

ACTIVATIONS = ("half_glu1", "half_glu2", "full_glu", "gelu")


@strict_config
class S5Config(PreTrainedConfig):
    r"""Configuration of an S5 sequence model (one MIMO diagonal SSM per layer, run with a parallel scan).

    Inputs follow :class:`S4DConfig`: tokens (``vocab_size``) or real-valued sequences (``input_size``).

    Args:
        vocab_size, input_size: exactly one is set (``input_size`` defaults to 1).
        hidden_size: model width H (SSM input/output features).
        num_hidden_layers: number of residual S5 blocks.
        state_size: latent size P (before conjugate symmetry halves it).
        blocks: J, the number of HiPPO-N blocks on the diagonal of the initial A; divides ``state_size``.
        conj_sym: keep one eigenvalue of each conjugate pair (P/2 complex states) and take 2 Re.
        clip_eigs: clamp Re(Lambda) <= -1e-4 in the forward pass (stability).
        discretization: "zoh" or "bilinear".
        C_init: "trunc_standard_normal", "lecun_normal" or "complex_normal".
        dt_min, dt_max: range of the log-uniform initial steps (one per state).
        step_rescale: multiplies every step (run at another sampling rate).
        bidirectional: a second scan in reverse (sees the future; cannot stream).
        activation: after the SSM, as in the S5 code: "half_glu1" (gelu(y) * sigmoid(W gelu(y))),
            "half_glu2" (y * sigmoid(W gelu(y))), "full_glu" (W1 g * sigmoid(W2 g)), "gelu".
        dropout, prenorm, pooling, layer_norm_eps, initializer_range: as in S4D.
        scan_chunk_size: scan in chunks of this many positions (memory), None = whole sequence.
    """

    model_type = "s5"

    vocab_size: int | None = None
    input_size: int | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 4
    state_size: int = 64
    blocks: int = 4
    conj_sym: bool = True
    clip_eigs: bool = False
    discretization: str = "zoh"
    C_init: str = "trunc_standard_normal"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    step_rescale: float = 1.0
    bidirectional: bool = False
    activation: str = "half_glu1"
    dropout: float = 0.1
    prenorm: bool = True
    pooling: str = "mean"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    scan_chunk_size: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.vocab_size is None and self.input_size is None:
            self.input_size = 1
        super().__post_init__(**kwargs)

    def validate_s5(self):
        """Every field (types are checked by ``strict``); ValueError naming the field, its value and what is
        allowed. Run by ``validate()``: at construction and when a model is built."""
        require_classifier(self)
        require_positive(self, "hidden_size", "num_hidden_layers", "state_size", "blocks")
        require_positive(self, "scan_chunk_size", optional=True)
        require(self, self.state_size % self.blocks == 0, "blocks", f"must divide state_size={self.state_size}")
        block = self.state_size // self.blocks
        require(self, not self.conj_sym or block % 2 == 0, "conj_sym",
                f"True needs an even block size state_size/blocks, got {block}")
        require_choice(self, "discretization", DISCRETIZATIONS)
        require_choice(self, "C_init", S5_C_INITS)
        require_choice(self, "activation", ACTIVATIONS)
        require(self, 0 < self.step_rescale < float("inf"), "step_rescale", "must be a finite number > 0")
        require_common(self, ("dropout",), "layer_norm_eps")


__all__ = ["S5Config"]
