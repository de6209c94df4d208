"""modeling_s5: the S5 SSM against a float64 loop of the paper's equations, and the S5 models.

Also streaming, timesteps, gradients and the Auto classes.
"""

import itertools

import pytest
import torch
from references import naive_s5
from tiny_models import s5_config
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from h3_hf import S5ForSequenceClassification, S5Model
from h3_hf.modeling_s5 import S5SSM

OPTIONS = list(itertools.product([True, False], [False, True], ["zoh", "bilinear"], [False, True]))


@pytest.mark.parametrize("conj_sym,bidirectional,disc,variable", OPTIONS)
def test_parallel_scan_equals_sequential_recurrence_float64(conj_sym, bidirectional, disc, variable):
    torch.manual_seed(0)
    ssm = S5SSM(6, 8, blocks=2, conj_sym=conj_sym, bidirectional=bidirectional, discretization=disc,
                dt_min=0.05, dt_max=0.5, clip_eigs=variable, scan_chunk_size=None).double()
    u = torch.randn(2, 23, 6, dtype=torch.float64)
    timesteps = torch.rand(2, 23, dtype=torch.float64) * 2 + 0.1 if variable else None
    ref = naive_s5(ssm, u, timesteps)
    assert (ssm(u, timesteps) - ref).abs().max() <= 1e-10
    ssm.scan_chunk_size = 5
    assert (ssm(u, timesteps) - ref).abs().max() <= 1e-10


@pytest.mark.parametrize("variable", [False, True])
def test_streaming_steps_equal_full_sequence(variable):
    torch.manual_seed(0)
    config = s5_config(input_size=3, hidden_size=8, num_hidden_layers=1, num_labels=2)
    layer = S5Model(config).layers[0].layer.eval()
    u = torch.randn(2, 17, 8)
    timesteps = torch.rand(2, 17) + 0.5 if variable else None
    full = layer(u, timesteps=timesteps)
    state, outs = layer.initial_state(2), []
    for k in range(17):
        out, state = layer.step(u[:, k], state, None if timesteps is None else timesteps[:, k])
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=0, atol=1e-5)


def test_unit_timesteps_equal_fixed_steps_and_rescale():
    torch.manual_seed(0)
    ssm = S5SSM(4, 8, blocks=1).double()
    u = torch.randn(2, 12, 4, dtype=torch.float64)
    torch.testing.assert_close(ssm(u, torch.ones(2, 12, dtype=torch.float64)), ssm(u), rtol=0, atol=1e-12)
    doubled = ssm(u, torch.full((2, 12), 2.0, dtype=torch.float64))
    ssm.step_rescale = 2.0
    torch.testing.assert_close(ssm(u), doubled, rtol=0, atol=1e-12)
    assert not torch.allclose(ssm(u), ssm(u, torch.rand(2, 12, dtype=torch.float64) + 0.1))


def test_s5_layer_passes_gradcheck_in_its_parameters_and_timesteps():
    torch.manual_seed(0)
    layer = S5SSM(3, 4, blocks=2, scan_chunk_size=3).double()
    names = [n for n, _ in layer.named_parameters()]
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    steps = (torch.rand(2, 7, dtype=torch.float64) + 0.5).requires_grad_()

    def run(steps, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,), {"timesteps": steps})
    assert torch.autograd.gradcheck(run, (steps, *layer.parameters()))


def test_padding_is_invisible_and_auto_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    config = s5_config(vocab_size=11, hidden_size=8, bidirectional=True, pad_token_id=0)
    model = S5ForSequenceClassification(config).eval()
    ids = torch.randint(1, 11, (1, 9))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], 1).long()
    torch.testing.assert_close(model(padded, attention_mask=mask).logits, model(ids).logits, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "s5"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is S5ForSequenceClassification
    assert torch.equal(loaded(padded, attention_mask=mask).logits, model(padded, attention_mask=mask).logits)
    assert type(AutoModel.from_pretrained(tmp_path)) is S5Model
