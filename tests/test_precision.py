"""precision: SSM parameters, kernels, FFTs and scans stay float32 under autocast and with half-precision weights.

fp16 and bf16, as autocast and as half-precision weights loaded with ``dtype=``, run forward and backward at L = 16k
without NaN or inf, with every SSM kernel, FFT and scan in float32; their outputs stay close to the float32 model's.
"""

import importlib

import pytest
import torch
from tiny_models import build, h3_config, h3_hybrid_config, s4d_config, s5_config

from h3_hf import H3ForCausalLM, S4DForSequenceClassification, S5ForSequenceClassification
from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.modeling_s5 import S5SSM
from h3_hf.ssm_kernels import diagonal_kernel, diagonal_state

LENGTH = 16384
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# max |logits - float32 logits| / max |float32 logits| (measured: scripts/check_precision.py)
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
# ||grads - float32 grads|| / ||float32 grads|| over all parameters (up to 19% in bf16 with LayerNorms in bf16: their
# weight and bias gradients are sums over all 16k positions, hence Float32LayerNorm)
GRADIENT_TOLERANCE = 0.1


def flat_gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in model.parameters()])


def make_model(family: str):
    if family == "h3":
        return build(H3ForCausalLM, h3_config(vocab_size=32))
    if family == "s4d":
        return build(S4DForSequenceClassification, s4d_config())
    return build(S5ForSequenceClassification, s5_config())


def inputs_for(family: str, dtype: torch.dtype) -> dict:
    torch.manual_seed(1)
    if family == "h3":
        ids = torch.randint(0, 32, (1, LENGTH))
        return {"input_ids": ids, "labels": ids}
    return {"inputs_embeds": torch.randn(1, LENGTH, 1).to(dtype), "labels": torch.tensor([1])}


def record_ssm_dtypes(monkeypatch) -> list:
    """Patch the FFTs and the S5 scan to record the dtype of what they are fed."""
    seen = []

    def recording(owner, name):
        fn = getattr(owner, name)

        def wrapped(x, *args, **kwargs):
            seen.append((name, x.dtype))
            return fn(x, *args, **kwargs)
        monkeypatch.setattr(owner, name, wrapped)
    recording(torch.fft, "rfft")
    recording(torch.fft, "irfft")
    recording(importlib.import_module(S5SSM.__module__), "associative_scan")  # the scan S5SSM calls
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["autocast", "weights"])
@pytest.mark.parametrize("family", ["h3", "s4d", "s5"])
def test_half_precision_forward_backward_at_16k(family, mode, precision, monkeypatch, tmp_path):
    half = HALF[precision]
    reference = make_model(family).eval()
    expected_out = reference(**inputs_for(family, torch.float32))
    expected_out.loss.backward()
    expected, expected_grads = expected_out.logits, flat_gradients(reference)
    reference.zero_grad()
    if mode == "weights":
        reference.save_pretrained(tmp_path)
        model = type(reference).from_pretrained(tmp_path, dtype=half).eval()
        assert next(model.parameters()).dtype in (half, torch.float32)
        assert any(p.dtype == half for p in model.parameters())
    else:
        model = reference
    seen = record_ssm_dtypes(monkeypatch)
    with torch.autocast("cpu", dtype=half, enabled=mode == "autocast"):
        out = model(**inputs_for(family, half if mode == "weights" else torch.float32))
    out.loss.backward()
    assert seen and all(dtype in (torch.float32, torch.complex64) for _, dtype in seen), seen
    assert ("associative_scan" if family == "s5" else "rfft") in {name for name, _ in seen}
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    error = (out.logits.float() - expected).abs().max() / expected.abs().max()
    assert error <= TOLERANCE[precision], f"{family} {mode} {precision}: relative error {error:.3g}"
    grads = flat_gradients(model)
    grad_error = (grads - expected_grads).norm() / expected_grads.norm()
    assert grad_error <= GRADIENT_TOLERANCE, f"{family} {mode} {precision}: gradient error {grad_error:.3g}"


def test_kernel_and_state_products_stay_float32_under_autocast_and_float64_when_asked():
    """The blocked kernel and state products are real matmuls, which CPU autocast would run in bfloat16: under
    autocast they give exactly the float32 results; float64 parameters give float64 kernels."""
    torch.manual_seed(0)
    module = DiagonalSSMKernel(4, 16)
    log_da, db, c = module.discrete()
    u = torch.randn(2, 4, 100)
    expected_kernel = diagonal_kernel(c[0], db, log_da, 100)
    expected_state = diagonal_state(u, log_da, db)
    expected_module = module(100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = diagonal_kernel(c[0], db, log_da, 100)
        state = diagonal_state(u, log_da, db)
        from_module = module(100)
    assert kernel.dtype == torch.float32 and state.dtype == torch.complex64 and from_module.dtype == torch.float32
    torch.testing.assert_close(kernel, expected_kernel, rtol=0, atol=0)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0)
    torch.testing.assert_close(from_module, expected_module, rtol=0, atol=0)
    assert module.double()(16).dtype == torch.float64


def test_dtype_loading_keeps_ssm_parameters_in_float32(tmp_path):
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_hybrid_config(num_hidden_layers=3, dt_min=0.01, dt_max=0.5)).eval()
    model.save_pretrained(tmp_path)
    half = H3ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.backbone.layers[0].mixer.q_proj.weight.dtype == torch.bfloat16
    assert half.backbone.layers[0].mixer.kernel.log_dt.dtype == torch.float32
    assert half.backbone.layers[0].mixer.shift_kernel.B.dtype == torch.float32
    ids = torch.randint(0, 40, (2, 16))
    logits = half(ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    ref = model(ids).logits
    assert (logits.float() - ref).abs().max() < 0.1 * ref.abs().max()
