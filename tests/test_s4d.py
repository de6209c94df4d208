"""S4D layer and classifier: modes agree, padding is inert, configs validate, checkpoints round-trip."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import h3_hf  # noqa: F401  (registers the Auto classes)
from h3_hf import S4DConfig, S4DForSequenceClassification, S4DModel, ssm_parameter_groups
from h3_hf.modeling_s4d import S4DLayer
from h3_hf.ssm_init import diagonal_init


def tiny_config(**kw):
    base = dict(hidden_size=16, num_hidden_layers=2, state_size=8, dropout=0.0, num_labels=3)
    base.update(kw)
    return S4DConfig(**base)


@pytest.mark.parametrize("init", ["inv", "lin", "legs"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_layer_convolution_mode_equals_step_by_step_recurrence(init, disc):
    torch.manual_seed(0)
    layer = S4DLayer(tiny_config(init=init, discretization=disc)).eval()
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
        layer = S4DLayer(tiny_config(bidirectional=bidirectional)).eval()
        change = (layer(x2) - layer(x))[0, :20].abs().max()
        if bidirectional:
            assert change > 1e-2, "bidirectional layer must see position 20 from earlier positions"
        else:
            assert change < 1e-5, "causal layer leaked the future (beyond FFT rounding)"
    with pytest.raises(ValueError, match="bidirectional"):
        S4DLayer(tiny_config(bidirectional=True)).initial_state(1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_never_changes_the_result(bidirectional, pooling):
    torch.manual_seed(0)
    model = S4DForSequenceClassification(tiny_config(vocab_size=11, bidirectional=bidirectional,
                                                     pooling=pooling)).eval()
    seqs = [torch.randint(1, 11, (n,)) for n in (7, 12, 4)]
    alone = torch.cat([model(input_ids=s[None]).logits for s in seqs])
    for side in ("right", "left"):
        ids = torch.zeros(3, 12, dtype=torch.long)
        mask = torch.zeros(3, 12, dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(12 - len(s), 12)
            ids[i, sl] = s
            mask[i, sl] = 1
        batched = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_real_valued_inputs_and_losses():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 2)
    model = S4DForSequenceClassification(tiny_config(input_size=2))
    out = model(inputs_embeds=x, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3)
    ref = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 1]))
    torch.testing.assert_close(out.loss, ref)
    # input_values is an alias of inputs_embeds
    torch.testing.assert_close(model(input_values=x).logits, out.logits)
    reg = S4DForSequenceClassification(tiny_config(input_size=2, num_labels=1))
    y = torch.randn(4)
    out = reg(inputs_embeds=x, labels=y)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), y))
    multi = S4DForSequenceClassification(tiny_config(input_size=2, problem_type="multi_label_classification"))
    target = torch.randint(0, 2, (4, 3)).float()
    out = multi(inputs_embeds=x, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = S4DForSequenceClassification(tiny_config(input_size=1, bidirectional=True))
    model(inputs_embeds=torch.randn(2, 16, 1), labels=torch.tensor([0, 2])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("field,value,match", [
    ("state_size", 7, "state_size"), ("state_size", 0, "state_size"), ("state_size", -2, "state_size"),
    ("init", "hippo", "init.*inv"), ("discretization", "euler", "discretization.*zoh"),
    ("dt_min", 0.5, "dt_min"), ("pooling", "max", "pooling.*mean"), ("dropout", 1.5, "dropout"),
    ("hidden_size", 0, "hidden_size"), ("num_hidden_layers", 0, "num_hidden_layers"),
])
def test_bad_config_raises_value_error_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        S4DConfig(**{field: value})


def test_vocab_size_and_input_size_are_exclusive():
    with pytest.raises(ValueError, match="vocab_size"):
        S4DConfig(vocab_size=10, input_size=3)
    assert S4DConfig().input_size == 1 and S4DConfig(vocab_size=5).input_size is None


def test_bad_inputs_raise_before_any_work():
    model = S4DForSequenceClassification(tiny_config(vocab_size=11))
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids=torch.tensor([[1, 11]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="empty"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    real = S4DForSequenceClassification(tiny_config(input_size=2))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        real(inputs_embeds=torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match="dtype"):
        real(inputs_embeds=torch.randn(1, 5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="input_ids given"):
        real(input_ids=torch.tensor([[1, 2]]))


def test_auto_classes_round_trip_bit_exactly(tmp_path):
    torch.manual_seed(0)
    model = S4DForSequenceClassification(tiny_config(vocab_size=11, bidirectional=True)).eval()
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
    model = S4DForSequenceClassification(tiny_config(init="inv"))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in state.items() if "A_imag" not in k and "inv_A_real" not in k}
    from safetensors.torch import save_file

    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = S4DForSequenceClassification.from_pretrained(tmp_path)
    a, _ = diagonal_init("inv", 8)
    for layer in loaded.s4d.layers:
        kernel = layer.layer.kernel
        torch.testing.assert_close(kernel.A_imag.detach(), a.imag.float().expand(16, -1))
        torch.testing.assert_close(kernel.inv_A_real.detach(), torch.full((16, 4), torch.log(torch.tensor(0.5))))


def test_ssm_parameter_groups():
    model = S4DForSequenceClassification(tiny_config(input_size=1))
    groups = {g["name"]: g for g in ssm_parameter_groups(model, lr=1e-2, weight_decay=0.05, ssm_lr=1e-3)}
    names = {id(p): n for n, p in model.named_parameters()}
    ssm = sorted(names[id(p)] for p in groups["ssm"]["params"])
    expected = sorted(f"s4d.layers.{i}.layer.kernel.{p}" for i in range(2)
                      for p in ("log_dt", "inv_A_real", "A_imag", "B"))
    assert ssm == expected
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0.0
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert all(n.endswith("bias") or ".norm" in n for n in no_decay)
    assert "score.weight" in {names[id(p)] for p in groups["decay"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))
