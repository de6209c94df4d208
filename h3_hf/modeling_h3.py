"""H3 (Hungry Hungry Hippos) language model.

Pre-norm blocks ``r = r + mixer(norm1(r)); r = r + mlp(norm2(r))`` with the H3 mixer
``Q * SSM_diag(SSM_shift(K) * V)`` (or causal attention at ``config.attn_layer_idx``), then ``ln_f`` and
a tied LM head. Module and parameter names follow the official checkpoints (``backbone.layers.i.mixer``...).

Two modes, one set of weights: the FFT convolution runs training and prompt prefill (states computed in
closed form), the recurrence runs decoding (O(1) per token). All states live in the cache
(``H3Cache``, a ``DynamicCache``): the shift SSM's window of recent k as the conv state, the
diagonal SSM's complex state as the recurrent state, keys/values for attention layers.
"""

import copy
import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple

from .configuration_h3 import MIXER_TYPES, H3Config
from .diagonal_ssm import DiagonalSSMKernel
from .fft_conv import fft_causal_conv
from .hub_utils import CodeInCheckpointMixin
from .precision import Float32LayerNorm, compute_dtype, no_autocast, parameter_dtype
from .ssm_kernels import block_powers, diagonal_kernel, diagonal_state, initial_state_response, shift_kernel
from .token_products import token_product, token_weight
from .validation import check_class_ids, check_ids_or_embeds, check_mask_values

# Decode parameters derived from the weights (see SSMMixer._decode_parameters), per cache: kept outside the cache's
# attributes so that a cache holds states only (torch.export flattens a returned cache by its attributes).
_STEP_PARAMETERS: "weakref.WeakKeyDictionary[H3Cache, dict]" = weakref.WeakKeyDictionary()


class H3Cache(DynamicCache):
    """DynamicCache that also counts the tokens it has seen.

    Needed because a model without attention layers has no KV cache to read the length from
    (``DynamicCache.get_seq_length`` raises then). Never auto-compiled (``is_compileable`` False).
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(config=config, **kwargs)
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def update_recurrent_state(self, recurrent_states: torch.Tensor, layer_idx: int, state_idx: int = 0,
                               **kwargs) -> torch.Tensor:
        """Also marks the layer as holding a previous state (the stock layer only does so on a conv-state
        update, which mixers without a shift SSM never make) and records its device for beam reordering."""
        out = super().update_recurrent_state(recurrent_states, layer_idx, state_idx, **kwargs)
        layer = self.layers[layer_idx]
        layer.has_previous_state[state_idx] = True
        if layer.device is None:
            layer.device, layer.dtype = recurrent_states.device, recurrent_states.dtype
        return out

    @property
    def step_parameters(self) -> dict:
        """Per layer (and "lm_head"): what decode steps need, derived from the weights once per generation (see
        ``cached_step_parameters``)."""
        return _STEP_PARAMETERS.setdefault(self, {})

    def reset(self):
        super().reset()
        self.seen_tokens = 0
        _STEP_PARAMETERS.pop(self, None)

    @property
    def is_linear(self) -> list[bool]:
        """Per layer, whether it holds an SSM state only. When all do, reported as False: transformers >= 5.24 then
        assumes the cache cannot tell how many tokens it holds and does not cut them off a continued prompt; this
        cache counts them (``seen_tokens``)."""
        linear = super().is_linear
        return [False] * len(linear) if all(linear) else linear

    @property
    def is_compileable(self) -> bool:
        return False


try:  # lets torch.export return the cache, as transformers' own exporter does for its caches
    from transformers.exporters.exporter_dynamo import register_pytree_node

    register_pytree_node(H3Cache)
except ImportError:
    pass


# transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache`` (the old name is a
# deprecated alias there); both names are accepted here and outputs use the installed version's own field
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def given_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache passed as ``cache`` (transformers >= 5.24) or as ``past_key_values`` (before); not both."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def cache_length(cache: Cache | None) -> int:
    """Tokens already in ``cache`` (0 without a cache)."""
    if cache is None:
        return 0
    if hasattr(cache, "seen_tokens"):
        return cache.seen_tokens
    return cache.get_seq_length()


def mask_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero (batch, channels..., length) ``x`` where ``mask`` (batch, length) is 0; never propagates NaN."""
    if mask is None:
        return x
    keep = mask.bool().view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


class ShiftSSMKernel(nn.Module):
    """Parameters of H3's shift SSM on D channels with N taps (official names and shapes).

    A is the shift matrix, so the SSM is a learned causal FIR filter of N taps. B (D, N), initialised to e_0;
    C (1, D, N), initialised U(-1/sqrt(N), 1/sqrt(N)). The recurrent state is the window of the last N inputs, so
    the cache stores raw inputs.
    """

    ssm_parameter_names = ("B",)

    def __init__(self, num_channels: int, state_size: int):
        super().__init__()
        self.num_channels = num_channels
        self.state_size = state_size
        self.B = nn.Parameter(torch.empty(num_channels, state_size, dtype=parameter_dtype()))
        self.C = nn.Parameter(torch.empty(1, num_channels, state_size, dtype=parameter_dtype()))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        dtype = parameter_dtype()
        b = torch.zeros(self.num_channels, self.state_size, dtype=dtype)
        b[:, 0] = 1.0
        bound = 1 / math.sqrt(self.state_size)
        return {"B": b, "C": torch.empty(1, self.num_channels, self.state_size, dtype=dtype).uniform_(-bound, bound)}

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def forward(self) -> torch.Tensor:
        """FIR kernel (D, N) in float32 (float64 for float64 parameters)."""
        dtype = compute_dtype(self.B)
        with no_autocast(self.B.device.type):
            return shift_kernel(self.B.to(dtype), self.C[0].to(dtype))


class SSMMixer(nn.Module):
    """What every SSM mixer shares: the diagonal SSM in both modes over (..., channels, length) inputs, and the
    decode-step parameters derived from the weights once per generation.

    A mixer defines ``forward(hidden_states, ssm_mask, past_key_values)`` on (batch, length, d),
    ``_step_parameters(dtype)`` (what a decode step reads, derived from the mixer's weights: the parameters of the
    mixer and of its direct submodules).
    """

    def _diag_convolve(self, u: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """diag_ssm(u) + D u over (batch, ..., channels, length) u, continuing the cached state if any."""
        length = u.shape[-1]
        prev_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        log_da, db, c = self.kernel.discrete()
        # the powers of dA that the kernel and the state (when a cache keeps it) both read, computed once
        powers = block_powers(log_da, length, chunk_size=self.kernel_chunk_size)
        kernel = diagonal_kernel(c[0], db, log_da, length, chunk_size=self.kernel_chunk_size, powers=powers)
        z = fft_causal_conv(u, kernel.to(u.dtype), self.D)
        if prev_state is not None:
            z = z + initial_state_response(prev_state, c[0], log_da, length, chunk_size=self.kernel_chunk_size)
        if cache is not None:
            state = diagonal_state(u, log_da, db, prev_state, chunk_size=self.kernel_chunk_size, powers=powers)
            cache.update_recurrent_state(state, self.layer_idx)
        return z

    def _diag_step(self, u: torch.Tensor, cache: Cache, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Diagonal SSM recurrence for one token: u (batch, ..., channels) -> diag_ssm(u) + D u of the same shape.
        The cached state (batch, ..., channels, N/2) advances in place: x <- dA x + dB u; y = 2 Re(C x)."""
        state = cache.get_recurrent_state(self.layer_idx)
        state.mul_(params["da"]).addcmul_(params["db"], u.unsqueeze(-1))
        if not isinstance(cache, H3Cache):  # another cache may keep its states elsewhere than the tensor it returned
            cache.update_recurrent_state(state, self.layer_idx)
        return torch.addcmul((params["c2"] * state).sum(-1).real, params["skip"], u)

    def _diag_step_parameters(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """dA, dB and 2 C (H, N/2), complex, and D (H,)."""
        log_da, db, c = self.kernel.discrete()
        return {"da": torch.exp(log_da), "db": db, "c2": 2 * c[0], "skip": self.D.to(dtype)}

    def _decode_parameters(self, cache: Cache, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """:meth:`_step_parameters`, derived once per generation (see :func:`cached_step_parameters`)."""
        weights = [*self._parameters.values(), *(p for m in self._modules.values() for p in m._parameters.values())]
        return cached_step_parameters(cache, self.layer_idx, dtype, weights,
                                      lambda: self._step_parameters(dtype))


def cached_step_parameters(cache: Cache, slot, dtype: torch.dtype, weights: list[torch.Tensor],
                           compute: Callable[[], dict]) -> dict:
    """``compute()`` (what decode steps need, derived from ``weights``), kept with the ``H3Cache`` under ``slot`` so
    that a generation derives it once, not every token.

    The entry lives as long as the cache (one generation) and is keyed on ``dtype`` and the identity, storage,
    version counter, dtype and device of every weight read, so an in-place update (optimizer step, ``copy_``,
    ``load_state_dict``) or a replaced weight or submodule between two steps is seen; an edit through ``.data`` in
    the middle of a generation is not (it bumps no version counter). Recomputed (not stored) while autograd is on,
    under ``torch.compile`` and for caches other than ``H3Cache``.
    """
    if not isinstance(cache, H3Cache) or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return compute()
    store = cache.step_parameters
    key = (dtype, *((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in weights))
    entry = store.get(slot)
    if entry is None or entry[0] != key:
        entry = store[slot] = (key, compute())
    return entry[1]


def mask_token(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero (batch, ...) ``x`` of one decoded token where the last column of ``mask`` (batch, past + 1) is 0."""
    return x if mask is None else mask_padding(x.unsqueeze(-1), mask[:, -1:]).squeeze(-1)


def call_on_token(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module`` run on one token x (batch, features) as a forward pass runs it, on (batch, 1, features): what an
    adapter, a quantised layer or a hook sees does not depend on the mode."""
    return module(x[:, None])[:, 0]


def is_plain_linear(*modules: nn.Module) -> bool:
    """Whether every module is an ``nn.Linear`` itself, without forward hooks: its weight and bias then are all it
    computes, so the mixers may read them directly (fused or transposed products). Anything else (a peft adapter,
    a quantised layer, a hook) is run as a module."""
    return all(type(m) is nn.Linear and not is_observed(m) for m in modules)


def is_observed(module: nn.Module) -> bool:
    """Whether calling ``module`` does more than its ``forward``: a forward or backward hook on it, or a ``forward``
    replaced on the instance (as accelerate's device hooks do)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or "forward" in module.__dict__)


def global_module_hooks() -> bool:
    """Whether forward or backward hooks are registered for every module (``nn.modules.module``'s global ones)."""
    hooks = nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
                or hooks._global_backward_pre_hooks)


def is_decode_step(hidden_states: torch.Tensor, cache: Cache | None) -> bool:
    """One new token continuing a cache: the recurrent path (else the convolution path)."""
    return cache is not None and cache_length(cache) > 0 and hidden_states.shape[1] == 1


class H3Mixer(SSMMixer):
    """The H3 layer (``mixer_type="h3"``): (batch, length, d) -> (batch, length, d).

    q, k, v = projections; k~ = shift_ssm(k) + ssm_k_D k; per head of width E (``ssm_head_dim``)
    kv[i, j] = k~_i v_j; z = diag_ssm(kv) + D kv; y[j] = sum_i q_i z[i, j]; out = output_linear(y).
    Output channels are d-major (channel = j * H + h), as in the official PyTorch path.
    The ablations below drop one of the two SSMs.
    """

    has_shift_ssm = True
    has_diag_ssm = True

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.hidden_size = d
        self.state_size = config.state_size
        self.head_dim = config.ssm_head_dim
        self.num_heads = d // config.ssm_head_dim
        self.kernel_chunk_size = config.kernel_chunk_size
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        if self.has_shift_ssm:
            self.shift_kernel = ShiftSSMKernel(d, config.state_size)
            self.ssm_k_D = nn.Parameter(torch.randn(d))
        if self.has_diag_ssm:
            self.kernel = DiagonalSSMKernel(self.num_heads, config.state_size, init=config.ssm_init,
                                            discretization=config.discretization, dt_min=config.dt_min,
                                            dt_max=config.dt_max, kernel_chunk_size=config.kernel_chunk_size)
            self.D = nn.Parameter(torch.randn(self.num_heads))
        self.output_linear = nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor, ssm_mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, **kwargs) -> torch.Tensor:
        """hidden_states (batch, length, d); ssm_mask (batch, length), 0 at padding. One token continuing a cache
        runs :meth:`step`, anything else the convolution mode."""
        cache = past_key_values
        if is_decode_step(hidden_states, cache):
            return self.step(hidden_states[:, 0], cache, ssm_mask)[:, None]
        with no_autocast(hidden_states.device.type):
            dtype = compute_dtype(self.output_linear.weight)
            x = hidden_states.to(dtype)
            projections = (self.q_proj, self.k_proj, self.v_proj)
            # 1. projections, each (B, d, L) contiguous along L (what the FFTs and the gating read)
            if is_plain_linear(*projections):
                q, k, v = (torch.baddbmm(lin.bias.to(dtype)[:, None], lin.weight.to(dtype).expand(len(x), -1, -1),
                                         x.transpose(1, 2)) for lin in projections)
            else:  # an adapter, a quantised layer or a hook: run the modules
                q, k, v = (lin(hidden_states).to(dtype).transpose(1, 2).contiguous() for lin in projections)
            # 2. shift SSM on k; padding is zeroed first so it never enters a state
            k = self._shift_convolve(mask_padding(k, ssm_mask), cache)
            # 3. per-head outer product kv (B, E, E, H, L)
            kv = mask_padding(self._heads(k).unsqueeze(2) * self._heads(v).unsqueeze(1), ssm_mask)
            # 4. diagonal SSM on kv
            z = self._diag_convolve(kv, cache)
            # 5. gate with q, sum over the head's input dim, output projection
            y = self._readout(q, z)
            if is_plain_linear(self.output_linear):
                out = F.linear(y.transpose(1, 2), self.output_linear.weight.to(dtype),
                               self.output_linear.bias.to(dtype))
            else:
                out = self.output_linear(y.transpose(1, 2).to(hidden_states.dtype))
        return out.to(hidden_states.dtype)

    def step(self, x: torch.Tensor, cache: Cache, ssm_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Recurrent mode, one token: x (batch, d) -> (batch, d), the same five stages as :meth:`forward` on the
        states in ``cache`` (advanced in place). ``ssm_mask`` (batch, past + 1): the last column 0 marks padding."""
        with no_autocast(x.device.type):
            dtype = compute_dtype(self.output_linear.weight)
            params = self._decode_parameters(cache, dtype)
            projections = (self.q_proj, self.k_proj, self.v_proj)
            if "qkv" in params and is_plain_linear(*projections):  # one (batch, d) @ (d, 3d) product
                q, k, v = token_product(x.to(dtype), params["qkv"]).chunk(3, dim=-1)
            else:
                q, k, v = (call_on_token(lin, x).to(dtype) for lin in projections)
            k = self._shift_step(mask_token(k, ssm_mask), cache, params)
            if self.head_dim == 1:  # the outer product and the readout are elementwise
                kv = mask_token(k * v, ssm_mask).view(len(x), 1, 1, -1)  # (B, E, E, H)
                y = q * self._diag_step(kv, cache, params).view(len(x), -1)
            else:
                kv = mask_token(self._heads(k).unsqueeze(2) * self._heads(v).unsqueeze(1), ssm_mask)  # (B, E, E, H)
                y = self._readout(q, self._diag_step(kv, cache, params))
            if "out" in params and is_plain_linear(self.output_linear):
                out = token_product(y, params["out"])
            else:
                out = call_on_token(self.output_linear, y.to(x.dtype))
        return out.to(x.dtype)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d, ...) with channel = h * E + i -> (batch, E, H, ...)."""
        b = x.shape[0]
        return x.reshape(b, self.num_heads, self.head_dim, *x.shape[2:]).transpose(1, 2)

    def _readout(self, q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y[b, j*H + h, ...] = sum_i q[b, h*E + i, ...] z[b, i, j, h, ...]; returns (batch, d, ...) (... = length,
        or nothing in a decode step)."""
        y = (self._heads(q).unsqueeze(2) * z).sum(1)  # (B, E_j, H, ...)
        return y.reshape(y.shape[0], self.hidden_size, *y.shape[3:])

    def _shift_convolve(self, k: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """shift_ssm(k) + ssm_k_D k over (batch, d, length) k, continuing the cached window if any."""
        length = k.shape[-1]
        shift = self.shift_kernel().to(k.dtype)  # (d, N)
        prev_window = cache.get_conv_state(self.layer_idx) if cache is not None else None
        if prev_window is not None:
            k_ext = torch.cat([prev_window.to(k.dtype), k], dim=-1)
            k_shift = fft_causal_conv(k_ext, shift)[..., -length:] + self.ssm_k_D.to(k.dtype)[:, None] * k
        else:
            k_shift = fft_causal_conv(k, shift, self.ssm_k_D)
        if cache is not None:
            cache.update_conv_state(k, self.layer_idx, conv_kernel_size=self.state_size)
        return k_shift

    def _shift_step(self, k: torch.Tensor, cache: Cache, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Shift SSM for one token, k (batch, d): a dot product with the cached window (oldest first)."""
        window = cache.update_conv_state(k[..., None], self.layer_idx, conv_kernel_size=self.state_size)
        shifted = torch.linalg.vecdot(window[..., -self.state_size:].to(k.dtype), params["shift"])
        return torch.addcmul(shifted, params["shift_skip"], k)

    def _step_parameters(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """q/k/v as one (3d, d) layer and the output projection, sliced for one-token products (``token_weight``),
        the shift kernel oldest-lag-first (d, N), ssm_k_D (d,), and the diagonal SSM's (``_diag_step_parameters``)."""
        projections, params = (self.q_proj, self.k_proj, self.v_proj), {}
        if is_plain_linear(*projections):  # else the modules run (see forward)
            params["qkv"] = token_weight(torch.cat([p.weight for p in projections]).to(dtype),
                                         torch.cat([p.bias for p in projections]).to(dtype))
        if is_plain_linear(self.output_linear):
            params["out"] = token_weight(self.output_linear.weight.to(dtype), self.output_linear.bias.to(dtype))
        if self.has_shift_ssm:
            params.update(shift=self.shift_kernel().to(dtype).flip(-1), shift_skip=self.ssm_k_D.to(dtype))
        if self.has_diag_ssm:
            params.update(self._diag_step_parameters(dtype))
        return params

class H3ShiftOnlyMixer(H3Mixer):
    """Ablation ``mixer_type="h3_shift_only"``: H3 without the diagonal SSM (z = kv)."""

    has_diag_ssm = False

    def _diag_convolve(self, kv: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        return kv

    def _diag_step(self, kv: torch.Tensor, cache: Cache, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return kv


class H3DiagOnlyMixer(H3Mixer):
    """Ablation ``mixer_type="h3_diag_only"``: H3 without the shift SSM (k~ = k)."""

    has_shift_ssm = False

    def _shift_convolve(self, k: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        return k

    def _shift_step(self, k: torch.Tensor, cache: Cache, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return k


class S4DMixer(SSMMixer):
    """``mixer_type="s4d"``: one SISO diagonal SSM per channel on the input itself, no q/k/v:
    out = output_linear(gelu(diag_ssm(x) + D x)), (batch, length, d) -> (batch, length, d)."""

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.hidden_size = d
        self.kernel_chunk_size = config.kernel_chunk_size
        self.kernel = DiagonalSSMKernel(d, config.state_size, init=config.ssm_init,
                                        discretization=config.discretization, dt_min=config.dt_min,
                                        dt_max=config.dt_max, kernel_chunk_size=config.kernel_chunk_size)
        self.D = nn.Parameter(torch.randn(d))
        self.output_linear = nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor, ssm_mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, **kwargs) -> torch.Tensor:
        """hidden_states (batch, length, d); ssm_mask (batch, length), 0 at padding. One token continuing a cache
        runs :meth:`step`, anything else the convolution mode."""
        cache = past_key_values
        if is_decode_step(hidden_states, cache):
            return self.step(hidden_states[:, 0], cache, ssm_mask)[:, None]
        with no_autocast(hidden_states.device.type):
            u = mask_padding(hidden_states.to(compute_dtype(self.output_linear.weight)).transpose(1, 2), ssm_mask)
            return self._output(self._diag_convolve(u, cache).transpose(1, 2), hidden_states.dtype)

    def step(self, x: torch.Tensor, cache: Cache, ssm_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Recurrent mode, one token: x (batch, d) -> (batch, d), the cached state advanced in place.
        ``ssm_mask`` (batch, past + 1): the last column 0 marks padding."""
        with no_autocast(x.device.type):
            dtype = compute_dtype(self.output_linear.weight)
            u = mask_token(x.to(dtype), ssm_mask)
            z = self._diag_step(u, cache, self._decode_parameters(cache, dtype))
            return self._output(z[:, None], x.dtype)[:, 0]

    def _output(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """output_linear(gelu(z)) for z (..., d) in the compute dtype, returned in ``dtype``."""
        if is_plain_linear(self.output_linear):
            weight = self.output_linear.weight
            return F.linear(F.gelu(z), weight.to(z.dtype), self.output_linear.bias.to(z.dtype)).to(dtype)
        return self.output_linear(F.gelu(z).to(dtype))  # an adapter, a quantised layer or a hook: run the module

    def _step_parameters(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self._diag_step_parameters(dtype)

MIXER_CLASSES = dict(zip(MIXER_TYPES, (H3Mixer, H3ShiftOnlyMixer, H3DiagOnlyMixer, S4DMixer), strict=True))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary(x: torch.Tensor, position_ids: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """GPT-NeoX rotary (non-interleaved) on the first ``rotary_dim`` dims of each head.

    x (batch, heads, length, head_dim); position_ids (batch, length).
    """
    if rotary_dim == 0:
        return x
    dtype = torch.promote_types(x.dtype, torch.float32)  # half precision computed in float32, float64 kept
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, device=x.device, dtype=dtype) / rotary_dim)
    angles = position_ids.to(dtype)[..., None] * inv_freq  # (B, L, rotary_dim/2)
    emb = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, rotary_dim)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    rot = rot.to(dtype) * emb.cos() + rotate_half(rot.to(dtype)) * emb.sin()
    return torch.cat([rot.to(x.dtype), rest], dim=-1)


def eager_attention_forward(module: nn.Module, query, key, value, attention_mask, scaling: float,
                            dropout: float = 0.0, **kwargs):
    """Plain softmax attention; query/key/value (batch, heads, length, head_dim)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class H3Attention(nn.Module):
    """Causal multi-head attention with packed Wqkv (official layout) and optional partial rotary."""

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.num_key_value_groups = 1
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Cache | None = None,
                output_attentions: bool = False, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (batch, length, d) -> output (batch, length, d) and, when ``output_attentions`` (computed
        on the eager path then), the attention weights (batch, heads, length, past + length), else None."""
        batch, length, _ = hidden_states.shape
        qkv = self.Wqkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in qkv.unbind(2))
        query = apply_partial_rotary(query, position_ids, self.config.rotary_emb_dim, self.config.rope_theta)
        key = apply_partial_rotary(key, position_ids, self.config.rotary_emb_dim, self.config.rope_theta)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        interface: Callable = eager_attention_forward
        if not output_attentions:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = interface(self, query, key, value, attention_mask,
                                 dropout=self.config.attention_dropout if self.training else 0.0,
                                 scaling=self.scaling, **kwargs)
        return self.out_proj(out.reshape(batch, length, -1)), (weights if output_attentions else None)


class H3MLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))): (batch, length, d) -> (batch, length, d)."""

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if is_decode_step(x, cache):
            return self.step(x[:, 0], cache)[:, None]
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    def step(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One token, x (batch, d) -> (batch, d): fc1 and fc2 as one-token products over slices of their weights
        (``token_weight``, kept with the cache), or run as modules if adapted or hooked."""
        plain = {name: layer for name, layer in (("fc1", self.fc1), ("fc2", self.fc2)) if is_plain_linear(layer)}
        weights = [t for layer in plain.values() for t in (layer.weight, layer.bias)]
        params = cached_step_parameters(cache, ("mlp", self.layer_idx), x.dtype, weights, lambda: {
            name: token_weight(layer.weight, layer.bias) for name, layer in plain.items()})
        hidden = token_product(x, params["fc1"]) if "fc1" in plain else call_on_token(self.fc1, x)
        hidden = F.gelu(hidden, approximate="tanh")
        return token_product(hidden, params["fc2"]) if "fc2" in plain else call_on_token(self.fc2, hidden)


class H3Block(GradientCheckpointingLayer):
    """Pre-norm block: r = r + mixer(norm1(r)); r = r + mlp(norm2(r))."""

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        self.is_attention = layer_idx in config.attn_layer_idx
        self.norm1 = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        mixer_class = H3Attention if self.is_attention else MIXER_CLASSES[config.mixer_type]
        self.mixer = mixer_class(config, layer_idx)
        self.norm2 = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = H3MLP(config, layer_idx)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor, causal_mask=None, ssm_mask=None, position_ids=None,
                past_key_values: Cache | None = None, output_attentions: bool = False,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, length, d) -> (batch, length, d), and the attention weights of an attention layer when
        ``output_attentions`` (else None)."""
        normed = self.norm1(hidden_states)
        weights = None
        if self.is_attention:
            mixed, weights = self.mixer(normed, attention_mask=causal_mask, position_ids=position_ids,
                                        past_key_values=past_key_values, output_attentions=output_attentions)
        else:
            mixed = self.mixer(normed, ssm_mask=ssm_mask, past_key_values=past_key_values)
        hidden_states = hidden_states + self.dropout(mixed)
        return hidden_states + self.dropout(self.mlp(self.norm2(hidden_states), past_key_values)), weights

    def can_step(self) -> bool:
        """Whether :meth:`step` computes what a module call of this block would: no dropout active, and no call it
        skips (this block's, its norms', mixer's, MLP's and dropout's) in training mode, hooked or wrapped."""
        skipped = (self, self.norm1, self.mixer, self.norm2, self.mlp, self.dropout)
        return not any(module.training or is_observed(module) for module in skipped)

    def step(self, x: torch.Tensor, cache: Cache, causal_mask=None, ssm_mask=None, position_ids=None) -> torch.Tensor:
        """:meth:`forward` for one token continuing ``cache``, x (batch, d) -> (batch, d), calling the submodules'
        ``forward`` and ``step`` methods directly (a module call costs more than a small layer's work); only where
        :meth:`can_step`."""
        normed = self.norm1.forward(x)
        if self.is_attention:
            mixed = self.mixer.forward(normed[:, None], attention_mask=causal_mask, position_ids=position_ids,
                                       past_key_values=cache)[0][:, 0]
        else:
            mixed = self.mixer.step(normed, cache, ssm_mask)
        x = x + mixed
        return x + self.mlp.step(self.norm2.forward(x), cache)


class H3PreTrainedModel(CodeInCheckpointMixin, PreTrainedModel):
    config: H3Config
    config_class = H3Config
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _no_split_modules = ["H3Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _is_stateful = True
    _can_compile_fullgraph = False  # the FFT convolution is a graph break (ssm._fft_conv); torch.export works
    _keep_in_fp32_modules_strict = ["shift_kernel", "mixer.kernel"]
    checkpoint_auto_map = {"AutoConfig": "configuration_h3.H3Config", "AutoModel": "modeling_h3.H3Model",
                           "AutoModelForCausalLM": "modeling_h3.H3ForCausalLM"}

    def __init__(self, config: H3Config, *args, **kwargs):
        config.validate()  # fields may have been changed since the config was built
        super().__init__(config, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2-style init; SSM parameters keep their structured init."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (DiagonalSSMKernel, ShiftSSMKernel)):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)
        elif isinstance(module, SSMMixer):
            for skip in ("D", "ssm_k_D"):
                if hasattr(module, skip):
                    init.normal_(getattr(module, skip))
        else:
            super()._init_weights(module)
        # residual-branch outputs: std / sqrt(2 n_layer), as in GPT-2 and the official code
        if isinstance(module, (H3MLP, H3Attention)):
            out = module.fc2 if isinstance(module, H3MLP) else module.out_proj
            init.normal_(out.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))


def check_lm_inputs(model: "H3Model", input_ids, inputs_embeds, attention_mask, position_ids, past_length: int):
    """Validate inputs before any work (ValueError naming the argument); returns (batch, length).

    Shapes and dtypes are always checked. Values (token range, 0/1 mask) are checked at the boundary: on calls
    that start or extend a sequence by several tokens and at ``generate()`` entry, not on the one-token steps
    that continue a cache (their tokens come from the model's own logits) and not while tracing, compiling or
    exporting.
    """
    given = input_ids if input_ids is not None else inputs_embeds
    check_values = not (past_length > 0 and given is not None and given.dim() > 1 and given.shape[1] == 1)
    shape = check_ids_or_embeds(input_ids, inputs_embeds, model.config.vocab_size, model.config.hidden_size,
                                model.embeddings.weight.dtype, check_values=check_values)
    if attention_mask is not None and not isinstance(attention_mask, dict):
        if attention_mask.dim() != 2 or attention_mask.shape[0] != shape[0] or \
                attention_mask.shape[1] not in (shape[1], past_length + shape[1]):
            raise ValueError(f"attention_mask must have shape (batch, past + length) = ({shape[0]}, "
                             f"{past_length + shape[1]}), got {tuple(attention_mask.shape)}")
        if check_values:
            check_mask_values(attention_mask)
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[0] not in (1, shape[0])
                                     or position_ids.shape[1] != shape[1]):
        raise ValueError(f"position_ids must have shape (batch or 1, length) = ({shape[0]}, {shape[1]}), got "
                         f"{tuple(position_ids.shape)}")
    return shape


class H3Model(H3PreTrainedModel):
    """Embedding -> H3 blocks -> ln_f. Returns ``BaseModelOutputWithPast`` (batch, length, d)."""

    def __init__(self, config: H3Config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList([H3Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = Float32LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """
        Args:
            input_ids: (batch, length) token ids, or ``inputs_embeds`` (batch, length, d).
            attention_mask: (batch, past + length) of 0/1, 0 at padding (left padding for generation); or the
                dict of masks per layer type that ``generate()`` builds for compileable caches.
            position_ids: (batch, length) positions for rotary attention (default: past + arange).
            past_key_values / cache: an ``H3Cache`` (created when ``use_cache`` and none is given); transformers
                >= 5.24 passes it as ``cache``.
            use_cache, output_hidden_states, output_attentions: None takes the config's value. Hidden states are
                the embeddings and each block's output (num_hidden_layers + 1); attentions are the weights of the
                attention layers (batch, heads, length, past + length), one per layer in ``attn_layer_idx``.
        """
        config = self.config
        past_key_values = given_cache(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        if self.gradient_checkpointing and self.training:
            use_cache = False
        past_length = cache_length(past_key_values)
        batch, length = check_lm_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, past_length)
        if use_cache and past_key_values is None:
            past_key_values = H3Cache(config=config)
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
            position_ids = position_ids.expand(batch, -1)

        if isinstance(attention_mask, dict):
            causal_mask = attention_mask.get("full_attention")
            ssm_mask = attention_mask.get("linear_attention")
            ssm_mask = ssm_mask[:, -length:] if ssm_mask is not None and ssm_mask.dim() == 2 else None
        else:
            ssm_mask = attention_mask[:, -length:] if attention_mask is not None else None
            causal_mask = None
            if config.attn_layer_idx:
                mask_config = config
                if output_attentions and config._attn_implementation != "eager":  # weights come from eager
                    mask_config = copy.copy(config)
                    mask_config._attn_implementation = "eager"
                causal_mask = create_causal_mask(config=mask_config, inputs_embeds=inputs_embeds,
                                                 attention_mask=attention_mask, **{CACHE_FIELD: past_key_values},
                                                 position_ids=position_ids)

        hidden_states = self.drop(inputs_embeds)
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        if use_cache and not (output_hidden_states or output_attentions) and self._steps_blocks(hidden_states,
                                                                                               past_key_values):
            x = hidden_states[:, 0]
            if ssm_mask is not None and ssm_mask.device.type == "cpu" and bool(ssm_mask[:, -1].all()):
                ssm_mask = None  # a real token in every row: nothing to zero (checked where it costs no device sync)
            for block in self.layers:  # the same blocks, without a module call per submodule
                x = block.step(x, past_key_values, causal_mask, ssm_mask, position_ids)
            hidden_states = x[:, None]
        else:
            for block in self.layers:
                hidden_states, weights = block(hidden_states, causal_mask=causal_mask, ssm_mask=ssm_mask,
                                               position_ids=position_ids,
                                               past_key_values=past_key_values if use_cache else None,
                                               output_attentions=output_attentions)
                if output_hidden_states:
                    all_hidden += (hidden_states,)
                if output_attentions and block.is_attention:
                    all_attentions += (weights,)
        hidden_states = self.ln_f(hidden_states)
        if use_cache and hasattr(past_key_values, "seen_tokens"):
            past_key_values.seen_tokens += length
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, hidden_states=all_hidden,
                                       attentions=all_attentions,
                                       **{CACHE_FIELD: past_key_values if use_cache else None})


    def _steps_blocks(self, hidden_states: torch.Tensor, cache: Cache | None) -> bool:
        """Whether a forward of ``hidden_states`` (batch, length, d) may run each block's ``step`` directly: a decode
        step (one token continuing ``cache``), not compiling, no global module hook, every block ``can_step``."""
        return (is_decode_step(hidden_states, cache) and not torch.compiler.is_compiling() and not global_module_hooks()
                and all(block.can_step() for block in self.layers))


class H3ForCausalLM(H3PreTrainedModel, GenerationMixin):
    """H3Model + LM head tied to the embedding. Logits (batch, length, vocab_size)."""

    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: H3Config):
        super().__init__(config)
        self.backbone = H3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.embeddings

    def set_input_embeddings(self, value):
        self.backbone.embeddings = value

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):
        """Build an ``H3Cache`` (not a stock DynamicCache, which cannot count tokens without attention)."""
        if (model_kwargs.get(CACHE_FIELD) is None and generation_config.use_cache is not False
                and generation_config.cache_implementation in (None, "dynamic")):
            model_kwargs[CACHE_FIELD] = H3Cache(config=self.config)
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size,
                                                     max_cache_length)

    def _prepare_model_inputs(self, inputs=None, bos_token_id=None, model_kwargs=None):
        """``generate()``'s input preparation, with the prompt and its ``attention_mask`` checked as ``forward``
        checks them: transformers would otherwise drop an all-ones mask of any shape, or fail later on one of the
        wrong batch size."""
        inputs_tensor, input_name, model_kwargs = super()._prepare_model_inputs(inputs, bos_token_id, model_kwargs)
        embeds = model_kwargs.get("inputs_embeds") if input_name == "inputs_embeds" else None
        ids = inputs_tensor if input_name == "input_ids" and embeds is None else None
        if ids is not None or embeds is not None:
            past = cache_length(given_cache(model_kwargs.get("cache"), model_kwargs.get("past_key_values")))
            check_lm_inputs(self.backbone, ids, embeds, model_kwargs.get("attention_mask"), None, past)
        return inputs_tensor, input_name, model_kwargs

    def _decode_step_logits(self, hidden_states: torch.Tensor, cache: H3Cache) -> torch.Tensor:
        """Logits (batch, 1, vocab_size) of one decoded token from hidden_states (batch, 1, d).

        On CPU the head is a one-token product over slices of W^T, one per thread (``token_weight``: a copy of the
        head's size, made once per generation and kept with the cache): at the GPT-2 vocabulary it is the largest
        weight a decode step reads, and the one where that layout pays. Elsewhere the head is applied as it is."""
        weight = self.lm_head.weight
        if (not is_plain_linear(self.lm_head) or self.lm_head.bias is not None or hidden_states.shape[1] != 1
                or weight.device.type != "cpu"):
            return self.lm_head(hidden_states)
        params = cached_step_parameters(cache, "lm_head", weight.dtype, [weight],
                                        lambda: {"weight": token_weight(weight, transpose=True)})
        return token_product(hidden_states[:, 0], params["weight"])[:, None]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Same inputs as :class:`H3Model`, plus ``labels`` (batch, length) (-100 = ignored; shifted
        inside the loss) and ``logits_to_keep`` (compute logits for the last N positions only)."""
        if labels is not None:
            given = input_ids if input_ids is not None else inputs_embeds
            if given is not None and tuple(labels.shape) != tuple(given.shape[:2]):
                raise ValueError(f"labels must have the inputs' shape (batch, length) = {tuple(given.shape[:2])}, "
                                 f"got {tuple(labels.shape)}")
            check_class_ids("labels", labels, self.config.vocab_size, kwargs.get("ignore_index", -100))
        cache = given_cache(cache, past_key_values)
        tokens = input_ids if input_ids is not None else inputs_embeds
        decode_step = tokens is not None and is_decode_step(tokens, cache)  # neither given: the backbone says so
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        if (decode_step and isinstance(cache, H3Cache) and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            logits = self._decode_step_logits(hidden_states[:, keep], cache)
        else:
            logits = self.lm_head(hidden_states[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **{CACHE_FIELD: outputs.get(CACHE_FIELD)})


# save_pretrained copies this file and its relative imports into every checkpoint (see hub_utils.py)
H3Model.register_for_auto_class("AutoModel")
H3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")


__all__ = ["H3Cache", "H3PreTrainedModel", "H3Model", "H3ForCausalLM"]
