"""H3 (Hungry Hungry Hippos) configuration."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

H3_DISCRETIZATIONS = ("zoh", "bilinear")
H3_MIXER_TYPES = ("h3", "h3_shift_only", "h3_diag_only", "s4d")
H3_SSM_INITS = ("lin", "inv", "legs")


def _require(ok: bool, field: str, value, allowed: str):
    if not ok:
        raise ValueError(f"H3Config.{field}={value!r} is invalid: {allowed}")


@strict(accept_kwargs=True)
class H3Config(PreTrainedConfig):
    r"""Configuration of an H3 language model (defaults: the released H3-125M).

    Args:
        vocab_size: embedding rows; rounded up to a multiple of ``pad_vocab_size_multiple``
            (GPT-2's 50257 becomes 50264 as in the released checkpoints).
        hidden_size: model width d.
        num_hidden_layers: number of pre-norm blocks.
        state_size: state size N of both SSMs (N taps of the shift SSM, N/2 complex modes of the
            diagonal SSM); positive and even.
        head_dim: channels per head of the diagonal SSM (outer product k v^T per head); divides
            ``hidden_size``.
        attn_layer_idx: 0-based indices of the layers whose mixer is causal multi-head attention.
        mixer_type: the mixer of the other layers. "h3" (q * diag_ssm(shift_ssm(k) * v)); the paper's
            ablations "h3_shift_only" (q * (shift_ssm(k) * v), no diagonal SSM) and "h3_diag_only"
            (q * diag_ssm(k * v), no shift SSM); "s4d" (gelu(diag_ssm(x)), the S4D baseline: no shift,
            no projections, no multiplicative interaction; needs ``head_dim=1``).
        ssm_init: initialisation of the diagonal SSM's A ("lin", "inv", "legs"); None: "lin" for the H3
            mixers (as released), "inv" for "s4d" (the paper's S4D baseline).
        num_attention_heads: heads of the attention layers; divides ``hidden_size``.
        rotary_emb_dim: rotary dims per attention head (GPT-NeoX style, partial); 0 = no position
            information in attention (the released models except the 2.7B "rotary" one).
        rope_theta: rotary base.
        intermediate_size: MLP width (None: 4 * hidden_size).
        discretization: discretisation of the diagonal SSM, "bilinear" (released models) or "zoh".
        dt_min, dt_max: range of the log-uniform initial step sizes.
        layer_norm_epsilon: LayerNorm epsilon.
        embedding_dropout, resid_dropout, attention_dropout: dropout probabilities.
        initializer_range: std of the GPT-2-style normal init.
        tie_word_embeddings: share the LM head with the input embedding.
        pad_vocab_size_multiple: see ``vocab_size``.
        kernel_chunk_size: positions per block of the blocked kernel and prefill-state products (None:
            ceil(sqrt(L)), which keeps their memory O(H N sqrt(L))); a speed knob, results do not change.
    """

    model_type = "h3"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 50264
    hidden_size: int = 768
    num_hidden_layers: int = 12
    state_size: int = 64
    head_dim: int = 1
    attn_layer_idx: list[int] | None = None
    mixer_type: str = "h3"
    ssm_init: str | None = None
    num_attention_heads: int = 12
    rotary_emb_dim: int = 0
    rope_theta: float = 10000.0
    intermediate_size: int | None = None
    discretization: str = "bilinear"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    layer_norm_epsilon: float = 1e-5
    embedding_dropout: float = 0.1
    resid_dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    pad_vocab_size_multiple: int = 8
    kernel_chunk_size: int | None = None
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.attn_layer_idx is None:
            self.attn_layer_idx = []
        self.attn_layer_idx = sorted(int(i) for i in self.attn_layer_idx)
        if self.ssm_init is None:
            self.ssm_init = "inv" if self.mixer_type == "s4d" else "lin"
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.pad_vocab_size_multiple > 1 and self.vocab_size % self.pad_vocab_size_multiple:
            m = self.pad_vocab_size_multiple
            self.vocab_size = (self.vocab_size + m - 1) // m * m
        super().__post_init__(**kwargs)
        self.validate_h3()

    @property
    def layer_types(self) -> list[str]:
        """"full_attention" for attention layers, "linear_attention" (conv + recurrent state) for H3 layers."""
        return ["full_attention" if i in self.attn_layer_idx else "linear_attention"
                for i in range(self.num_hidden_layers)]

    def validate_h3(self):
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "head_dim", "num_attention_heads",
                      "intermediate_size", "pad_vocab_size_multiple"):
            _require(getattr(self, field) > 0, field, getattr(self, field), "must be a positive integer")
        _require(self.state_size > 0 and self.state_size % 2 == 0, "state_size", self.state_size,
                 "must be a positive even integer")
        _require(self.hidden_size % self.head_dim == 0, "head_dim", self.head_dim,
                 f"must divide hidden_size={self.hidden_size}")
        bad = [i for i in self.attn_layer_idx if not 0 <= i < self.num_hidden_layers]
        _require(not bad and len(set(self.attn_layer_idx)) == len(self.attn_layer_idx), "attn_layer_idx",
                 self.attn_layer_idx, f"entries must be distinct layer indices in [0, {self.num_hidden_layers})")
        if self.attn_layer_idx:
            _require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                     self.num_attention_heads, f"must divide hidden_size={self.hidden_size}")
            head = self.hidden_size // self.num_attention_heads
            _require(0 <= self.rotary_emb_dim <= head and self.rotary_emb_dim % 2 == 0, "rotary_emb_dim",
                     self.rotary_emb_dim, f"must be an even number in [0, attention head dim {head}]")
        _require(self.mixer_type in H3_MIXER_TYPES, "mixer_type", self.mixer_type,
                 f"allowed values are {H3_MIXER_TYPES}")
        _require(self.mixer_type != "s4d" or self.head_dim == 1, "head_dim", self.head_dim,
                 "must be 1 when mixer_type='s4d' (one SISO SSM per channel)")
        _require(self.ssm_init in H3_SSM_INITS, "ssm_init", self.ssm_init, f"allowed values are {H3_SSM_INITS}")
        _require(self.discretization in H3_DISCRETIZATIONS, "discretization", self.discretization,
                 f"allowed values are {H3_DISCRETIZATIONS}")
        _require(0 < self.dt_min < self.dt_max, "dt_min/dt_max", (self.dt_min, self.dt_max),
                 "need 0 < dt_min < dt_max")
        for field in ("embedding_dropout", "resid_dropout", "attention_dropout"):
            _require(0.0 <= getattr(self, field) < 1.0, field, getattr(self, field), "must be in [0, 1)")
        _require(self.kernel_chunk_size is None or self.kernel_chunk_size > 0, "kernel_chunk_size",
                 self.kernel_chunk_size, "must be None or a positive integer")


__all__ = ["H3Config"]
