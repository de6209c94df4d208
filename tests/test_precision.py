"""Issue 8 (precision): fp16 and bf16, as autocast and as half-precision weights loaded with ``dtype=``, run forward
and backward at L = 16k without NaN or inf, with every SSM kernel, FFT and scan in float32; their outputs stay
close to the float32 model's."""

import pytest
import torch

import h3_hf.modeling_s5 as modeling_s5
from h3_hf import (
    H3Config,
    H3ForCausalLM,
    S4DConfig,
    S4DForSequenceClassification,
    S5Config,
    S5ForSequenceClassification,
)

LENGTH = 16384
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# max |logits - float32 logits| / max |float32 logits| (measured: scripts/check_precision.py)
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
# ||grads - float32 grads|| / ||float32 grads|| over all parameters (up to 19% in bf16 before the LayerNorms ran in
# float32: their weight and bias gradients are sums over all 16k positions)
GRADIENT_TOLERANCE = 0.1


def flat_gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in model.parameters()])


def make_model(family: str):
    torch.manual_seed(0)
    if family == "h3":
        config = H3Config(vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=8, embedding_dropout=0.0,
                          pad_vocab_size_multiple=1)
        return H3ForCausalLM(config)
    common = dict(input_size=1, hidden_size=16, num_hidden_layers=2, state_size=8, num_labels=3, dropout=0.0)
    if family == "s4d":
        return S4DForSequenceClassification(S4DConfig(**common))
    return S5ForSequenceClassification(S5Config(blocks=2, **common))


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
    recording(modeling_s5, "associative_scan")
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
