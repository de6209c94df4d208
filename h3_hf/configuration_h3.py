"""H3 (Hungry Hungry Hippos) configuration."""

from transformers.configuration_utils import PreTrainedConfig

from .ssm_init import DIAGONAL_INITS
from .ssm_kernels import DISCRETIZATIONS
from .validation import require, require_choice, require_common, require_positive, strict_config

MIXER_TYPES = ("h3", "h3_shift_only", "h3_diag_only", "s4d")


@strict_config
class H3Config(PreTrainedConfig):
    r"""Configuration of an H3 language model (defaults: the released H3-125M).

    Args:
        vocab_size: embedding rows; rounded up to a multiple of ``pad_vocab_size_multiple``
            (GPT-2's 50257 becomes 50264 as in the released checkpoints).
        hidden_size: model width d.
        num_hidden_layers: number of pre-norm blocks.
        state_size: state size N of both SSMs (N taps of the shift SSM, N/2 complex modes of the
            diagonal SSM); positive and even.
        ssm_head_dim: channels per head of the diagonal SSM (outer product k v^T per head); divides
            ``hidden_size``. A config.json with ``head_dim`` and no ``ssm_head_dim`` (the earlier name of this
            field) is read with that ``head_dim`` as this width.
        attn_layer_idx: 0-based indices of the layers whose mixer is causal multi-head attention.
        mixer_type: the mixer of the other layers. "h3" (q * diag_ssm(shift_ssm(k) * v)); the paper's
            ablations "h3_shift_only" (q * (shift_ssm(k) * v), no diagonal SSM) and "h3_diag_only"
            (q * diag_ssm(k * v), no shift SSM); "s4d" (gelu(diag_ssm(x)), the S4D baseline: no shift,
            no projections, no multiplicative interaction; needs ``ssm_head_dim=1``).
        ssm_init: initialisation of the diagonal SSM's A ("lin", "inv", "legs"); None: "lin" for the H3
            mixers (as released), "inv" for "s4d" (the paper's S4D baseline).
        num_attention_heads: heads of the attention layers; divides ``hidden_size``.
        head_dim: size of one attention head, as everywhere in transformers (None: ``hidden_size //
            num_attention_heads``, the only value the packed Wqkv projection allows).
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
    ssm_head_dim: int = 1
    attn_layer_idx: list[int] | None = None
    mixer_type: str = "h3"
    ssm_init: str | None = None
    num_attention_heads: int = 12
    head_dim: int | None = None
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
        self.attn_layer_idx = sorted(self.attn_layer_idx)
        if self.ssm_init is None:
            self.ssm_init = "inv" if self.mixer_type == "s4d" else "lin"
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads if self.num_attention_heads > 0 else 0
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        m = self.pad_vocab_size_multiple
        if self.vocab_size > 0 and m > 1 and self.vocab_size % m:
            self.vocab_size = (self.vocab_size + m - 1) // m * m
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config loads as saved: ``vocab_size`` is not rounded up again (a model resized to any size
        reloads with its shapes), and a file from before ``ssm_head_dim`` existed, whose ``head_dim`` was the SSM
        head width, keeps that meaning."""
        config_dict = dict(config_dict)
        if "head_dim" in config_dict and "ssm_head_dim" not in config_dict:
            config_dict["ssm_head_dim"] = config_dict.pop("head_dim")
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        if "vocab_size" in config_dict and "vocab_size" not in kwargs:
            config.vocab_size = config_dict["vocab_size"]
            config.validate()
        return result

    @property
    def layer_types(self) -> list[str]:
        """"full_attention" for attention layers, "linear_attention" (conv + recurrent state) for H3 layers."""
        return ["full_attention" if i in self.attn_layer_idx else "linear_attention"
                for i in range(self.num_hidden_layers)]

    def validate_h3(self):
        """Every field (types are checked by ``strict``); ValueError naming the field, its value and what is
        allowed. Run by ``validate()``: at construction and when a model is built."""
        require_positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "ssm_head_dim", "num_attention_heads",
                         "intermediate_size", "pad_vocab_size_multiple")
        require_positive(self, "kernel_chunk_size", optional=True)
        require(self, self.state_size > 0 and self.state_size % 2 == 0, "state_size",
                "must be a positive even integer")
        require(self, self.hidden_size % self.ssm_head_dim == 0, "ssm_head_dim",
                f"must divide hidden_size={self.hidden_size}")
        bad = [i for i in self.attn_layer_idx if not 0 <= i < self.num_hidden_layers]
        require(self, not bad and len(set(self.attn_layer_idx)) == len(self.attn_layer_idx), "attn_layer_idx",
                f"entries must be distinct layer indices in [0, num_hidden_layers={self.num_hidden_layers})")
        require(self, self.rotary_emb_dim >= 0 and self.rotary_emb_dim % 2 == 0, "rotary_emb_dim",
                "must be an even integer >= 0")
        if self.attn_layer_idx:  # only attention layers use the head count and rotary dims
            require(self, self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                    f"must divide hidden_size={self.hidden_size} when attn_layer_idx is not empty")
            head = self.hidden_size // self.num_attention_heads
            require(self, self.head_dim == head, "head_dim",
                    f"must be hidden_size / num_attention_heads = {head} (the attention head size) or None")
            require(self, self.rotary_emb_dim <= head, "rotary_emb_dim",
                    f"must be an even number in [0, attention head dim {head}]")
        require(self, 0 < self.rope_theta < float("inf"), "rope_theta", "must be a finite number > 0")
        require_choice(self, "mixer_type", MIXER_TYPES)
        require(self, self.mixer_type != "s4d" or self.ssm_head_dim == 1, "ssm_head_dim",
                "must be 1 when mixer_type='s4d' (one SISO SSM per channel)")
        require_choice(self, "ssm_init", DIAGONAL_INITS)
        require_choice(self, "discretization", DISCRETIZATIONS)
        require_common(self, ("embedding_dropout", "resid_dropout", "attention_dropout"), "layer_norm_epsilon")


__all__ = ["H3Config"]
