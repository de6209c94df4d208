"""S5: parallel scan against float64 loops of the paper's equations, streaming, timesteps, HF plumbing."""

import itertools

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from h3_hf import S5Config, S5ForSequenceClassification, S5Model, ssm_parameter_groups
from h3_hf.modeling_s5 import S5SSM
from h3_hf.ssm_init import hippo_n_blocks
from h3_hf.ssm_scan import associative_scan, sequential_scan


def naive_s5(ssm: S5SSM, u: torch.Tensor, timesteps: torch.Tensor | None) -> torch.Tensor:
    """Loop over time of x_k = Lambda_bar_k x_{k-1} + B_bar_k u_k written from the equations, float64."""
    sd = {k: v.detach().double() for k, v in ssm.state_dict().items()}
    re = sd["Lambda_re"].clamp(max=-1e-4) if ssm.clip_eigs else sd["Lambda_re"]
    lam = torch.complex(re, sd["Lambda_im"])
    b = torch.view_as_complex(sd["B"].contiguous())  # (P_h, H)
    c = torch.view_as_complex(sd["C"].contiguous())  # (H, dirs * P_h)
    half = lam.shape[0]
    base = torch.exp(sd["log_step"]) * ssm.step_rescale
    batch, length, _ = u.shape
    tau = torch.ones(batch, length, dtype=torch.float64) if timesteps is None else timesteps.double()

    def disc(step):
        if ssm.discretization == "zoh":
            lam_bar = torch.exp(lam * step)
            return lam_bar, ((lam_bar - 1) / lam)[:, None] * b
        lam_bar = (1 + step * lam / 2) / (1 - step * lam / 2)
        return lam_bar, (step / (1 - step * lam / 2))[:, None] * b

    scale = 2 if ssm.conj_sym else 1
    y = torch.zeros(batch, length, u.shape[-1], dtype=torch.float64)
    for i in range(batch):
        x = torch.zeros(half, dtype=torch.complex128)
        for k in range(length):
            lam_bar, b_bar = disc(base * tau[i, k])
            x = lam_bar * x + b_bar @ u[i, k].to(torch.complex128)
            y[i, k] += scale * (c[:, :half] @ x).real
        if ssm.bidirectional:
            x = torch.zeros(half, dtype=torch.complex128)
            for k in reversed(range(length)):
                step = base * (tau[i, k + 1] if k + 1 < length else 1.0)
                lam_bar, b_bar = disc(step)
                x = lam_bar * x + b_bar @ u[i, k].to(torch.complex128)
                y[i, k] += scale * (c[:, half:] @ x).real
    return y + sd["D"] * u


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


def test_associative_scan_matches_loop_for_odd_lengths_and_chunks():
    torch.manual_seed(0)
    for length in (1, 2, 3, 7, 64, 129):
        a = torch.randn(3, length, 4, dtype=torch.complex128) * 0.6
        b = torch.randn(3, length, 4, dtype=torch.complex128)
        ref = sequential_scan(a, b)
        for chunk in (None, 4, 50):
            assert (associative_scan(a, b, chunk_size=chunk) - ref).abs().max() <= 1e-12
            assert (associative_scan(a[:1, :1], b, chunk_size=chunk) - sequential_scan(a[:1, :1], b)).abs().max() \
                <= 1e-12
    with pytest.raises(ValueError, match="a must have shape"):
        associative_scan(torch.ones(1, 3, 4), torch.ones(1, 5, 4))


@pytest.mark.parametrize("variable", [False, True])
def test_streaming_steps_equal_full_sequence(variable):
    torch.manual_seed(0)
    config = S5Config(input_size=3, hidden_size=8, state_size=8, blocks=2, num_hidden_layers=1, dropout=0.0)
    layer = S5Model(config).layers[0].layer.eval()
    u = torch.randn(2, 17, 8)
    timesteps = torch.rand(2, 17) + 0.5 if variable else None
    full = layer(u, timesteps=timesteps)
    state, outs = layer.initial_state(2), []
    for k in range(17):
        out, state = layer.step(u[:, k], state, None if timesteps is None else timesteps[:, k])
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=0, atol=1e-5)


def test_hippo_n_eigenvalues_equal_dense_eigenvalues():
    """Independent: eigenvalues of the dense HiPPO-N matrix built here from its definition."""
    n = 16
    i = torch.arange(n, dtype=torch.float64)
    legs = -torch.sqrt(2 * i[:, None] + 1) * torch.sqrt(2 * i[None, :] + 1) * (i[:, None] > i[None, :])
    legs = legs - torch.diag(i + 1)
    p = torch.sqrt(i + 0.5)
    dense = legs + p[:, None] * p[None, :]
    eig = torch.linalg.eigvals(dense)
    lam, v, vinv = hippo_n_blocks(2 * n, 2, conj_sym=False)
    key = lambda z: sorted(zip(z.real.round(decimals=8).tolist(), z.imag.round(decimals=8).tolist()))  # noqa: E731
    assert torch.allclose(torch.tensor(key(lam[:n])), torch.tensor(key(eig)), atol=1e-8)
    assert torch.allclose(lam[:n], lam[n:])  # J identical blocks
    assert torch.allclose(vinv @ v, torch.eye(2 * n, dtype=torch.complex128), atol=1e-10)
    half, _, _ = hippo_n_blocks(2 * n, 2, conj_sym=True)
    assert half.shape == (n,) and torch.allclose(torch.tensor(key(torch.cat([half[: n // 2], half[: n // 2].conj()]))),
                                                  torch.tensor(key(eig)), atol=1e-8)


def test_unit_timesteps_equal_fixed_steps_and_rescale():
    torch.manual_seed(0)
    ssm = S5SSM(4, 8, blocks=1).double()
    u = torch.randn(2, 12, 4, dtype=torch.float64)
    torch.testing.assert_close(ssm(u, torch.ones(2, 12, dtype=torch.float64)), ssm(u), rtol=0, atol=1e-12)
    doubled = ssm(u, torch.full((2, 12), 2.0, dtype=torch.float64))
    ssm.step_rescale = 2.0
    torch.testing.assert_close(ssm(u), doubled, rtol=0, atol=1e-12)
    assert not torch.allclose(ssm(u), ssm(u, torch.rand(2, 12, dtype=torch.float64) + 0.1))


def test_padding_is_invisible_and_auto_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    config = S5Config(vocab_size=11, hidden_size=8, state_size=8, blocks=2, num_hidden_layers=2, dropout=0.0,
                      num_labels=3, bidirectional=True, pad_token_id=0)
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


def test_ssm_parameters_get_their_own_optimizer_group():
    model = S5ForSequenceClassification(S5Config(input_size=1, hidden_size=8, state_size=8, blocks=2, num_labels=2))
    groups = {g["name"]: g for g in ssm_parameter_groups(model, lr=4e-3, weight_decay=0.05, ssm_lr=1e-3)}
    ssm_ids = {id(p) for p in groups["ssm"]["params"]}
    for block in model.s5.layers:
        for name in ("Lambda_re", "Lambda_im", "B", "log_step"):
            assert id(getattr(block.layer.ssm, name)) in ssm_ids
        assert id(block.layer.ssm.C) not in ssm_ids
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0.0


def test_float64_and_autocast_keep_ssm_math_wide():
    torch.manual_seed(0)
    model = S5ForSequenceClassification(S5Config(input_size=2, hidden_size=8, state_size=8, blocks=2, num_labels=2,
                                                 dropout=0.0)).eval()
    x = torch.randn(2, 30, 2)
    ref = model(inputs_embeds=x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs_embeds=x).logits
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("kw,match", [
    (dict(state_size=10, blocks=4), "blocks"), (dict(state_size=6, blocks=2), "conj_sym"),
    (dict(discretization="euler"), "discretization"), (dict(C_init="zeros"), "C_init"),
    (dict(activation="relu"), "activation"), (dict(step_rescale=0.0), "step_rescale"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_min"), (dict(vocab_size=5, input_size=2), "vocab_size/input_size"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        S5Config(**kw)


def test_bad_timesteps_raise_before_work():
    model = S5ForSequenceClassification(S5Config(input_size=1, hidden_size=8, state_size=8, blocks=2, num_labels=2))
    x = torch.randn(2, 5, 1)
    for bad, match in ((torch.zeros(2, 5), "> 0"), (torch.full((2, 5), float("nan")), "finite"),
                       (torch.ones(2, 4), "shape"), (torch.ones(2, 5, dtype=torch.long), "floating")):
        with pytest.raises(ValueError, match=match):
            model(inputs_embeds=x, timesteps=bad)


def test_scan_gradients_match_finite_differences():
    torch.manual_seed(0)
    a = (torch.randn(2, 9, 3, dtype=torch.complex128) * 0.5).requires_grad_()
    b = torch.randn(2, 9, 3, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: associative_scan(a, b, chunk_size=4), (a, b))
    a1 = (torch.randn(1, 1, 3, dtype=torch.complex128) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: associative_scan(a, b), (a1, b))
