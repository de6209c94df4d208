"""modeling_s4d: the S4D layer (convolution = recurrence, causal or bidirectional) and the S4D models.

Also their gradients, Auto classes and checkpoints.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import s4d_config
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import h3_hf  # noqa: F401  (registers the Auto classes)
from h3_hf import S4DConfig, S4DForSequenceClassification, S4DModel
from h3_hf.modeling_s4d import S4DLayer
from h3_hf.ssm_init import diagonal_init


@pytest.mark.parametrize("init", ["inv", "lin", "legs"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_layer_convolution_mode_equals_step_by_step_recurrence(init, disc):
    torch.manual_seed(0)
    layer = S4DLayer(s4d_config(init=init, discretization=disc)).eval()
    x = torch.randn(2, 40, 16)
    y_conv = layer(x)
    state = layer.initial_state(2)
    steps = []
    for t in range(40):
        y_t, state = layer.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(y_conv, torch.stack(steps, 1), rtol=0, atol=1e-5)
    # prefill: the closed-form state equals the state the recurrence reached
    torch.testing.assert_close(layer.final_state(x), state, rtol=0, atol=1e-5)


def test_bidirectional_layer_sees_the_future_and_causal_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 30, 16)
    x2 = x.clone()
    x2[:, 20] += 10.0  # change one future position
    for bidirectional in (False, True):
        layer = S4DLayer(s4d_config(bidirectional=bidirectional)).eval()
        change = (layer(x2) - layer(x))[0, :20].abs().max()
        if bidirectional:
            assert change > 1e-2, "bidirectional layer must see position 20 from earlier positions"
        else:
            assert change < 1e-5, "causal layer leaked the future (beyond FFT rounding)"
    with pytest.raises(ValueError, match="bidirectional"):
        S4DLayer(s4d_config(bidirectional=True)).initial_state(1)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = S4DForSequenceClassification(s4d_config(input_size=1, bidirectional=True))
    model(inputs_embeds=torch.randn(2, 16, 1), labels=torch.tensor([0, 2])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_auto_classes_round_trip_bit_exactly(tmp_path):
    torch.manual_seed(0)
    model = S4DForSequenceClassification(s4d_config(vocab_size=11, bidirectional=True)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".bin", ".pt", ".pth"))]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "s4d"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), S4DConfig)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is S4DForSequenceClassification
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, 11, (2, 9))
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    stored = load_file(tmp_path / "model.safetensors")
    assert set(stored) == set(model.state_dict())
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is S4DModel


def test_missing_ssm_weights_get_the_structured_init_not_garbage(tmp_path):
    """from_pretrained builds on the meta device; parameters absent from the file must be re-initialised."""
    torch.manual_seed(0)
    model = S4DForSequenceClassification(s4d_config(init="inv"))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in state.items() if "A_imag" not in k and "inv_A_real" not in k}

    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = S4DForSequenceClassification.from_pretrained(tmp_path)
    a, _ = diagonal_init("inv", 8)
    for layer in loaded.s4d.layers:
        kernel = layer.layer.kernel
        torch.testing.assert_close(kernel.A_imag.detach(), a.imag.float().expand(16, -1))
        torch.testing.assert_close(kernel.inv_A_real.detach(), torch.full((16, 4), torch.log(torch.tensor(0.5))))
