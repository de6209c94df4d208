"""H3 language model: convolution mode against an explicit float64 recurrence, cache handover, errors."""

import math

import pytest
import torch

from h3_hf import H3Config, H3ForCausalLM
from h3_hf.modeling_h3 import CACHE_FIELD


def tiny_config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, state_size=8, num_attention_heads=2,
                embedding_dropout=0.0, pad_vocab_size_multiple=1, dt_min=0.01, dt_max=0.5)
    base.update(kw)
    return H3Config(**base)


def naive_h3_logits(model: H3ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Token-by-token evaluation of the official equations (spec h3.md), float64, no FFT, no cache object.

    Shift SSM with the official state (shift_right + B k); diagonal SSM with dA, dB from the formulas;
    attention as a softmax over all previous positions with GPT-NeoX partial rotary.
    """
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    d, n, p = cfg.hidden_size, cfg.state_size, cfg.ssm_head_dim
    h = d // p
    batch, length = ids.shape

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, (d,), sd[prefix + ".weight"], sd[prefix + ".bias"],
                                              cfg.layer_norm_epsilon)

    def lin(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    states = {}
    kv_cache = {}
    outputs = []
    for t in range(length):
        r = sd["backbone.embeddings.weight"][ids[:, t]]  # (B, d)
        for i in range(cfg.num_hidden_layers):
            pre = f"backbone.layers.{i}"
            x = ln(r, pre + ".norm1")
            if i in cfg.attn_layer_idx:
                qkv = lin(x, pre + ".mixer.Wqkv").view(batch, 3, cfg.num_attention_heads, -1)
                q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
                hd = q.shape[-1]
                rd = cfg.rotary_emb_dim
                if rd:
                    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
                    ang = t * freqs
                    cos, sin = torch.cos(ang), torch.sin(ang)

                    def rot(z, rd=rd, cos=cos, sin=sin):
                        a, b = z[..., : rd // 2], z[..., rd // 2: rd]
                        return torch.cat([a * cos - b * sin, b * cos + a * sin, z[..., rd:]], -1)

                    q, k = rot(q), rot(k)
                ks, vs = kv_cache.setdefault(i, ([], []))
                ks.append(k)
                vs.append(v)
                keys, values = torch.stack(ks, 2), torch.stack(vs, 2)  # (B, heads, t+1, hd)
                att = torch.softmax(torch.einsum("bhd,bhsd->bhs", q, keys) / math.sqrt(hd), -1)
                y = torch.einsum("bhs,bhsd->bhd", att, values).reshape(batch, d)
                y = lin(y, pre + ".mixer.out_proj")
            else:
                m = pre + ".mixer"
                mixer = cfg.mixer_type
                hh, pp = (d, 1) if mixer == "s4d" else (h, p)
                xs, xd = states.get(i, (torch.zeros(batch, d, n, dtype=torch.float64),
                                        torch.zeros(batch, pp, pp, hh, n // 2, dtype=torch.complex128)))
                if mixer == "s4d":
                    kv = x.view(batch, 1, 1, d)
                else:
                    q, k, v = lin(x, m + ".q_proj"), lin(x, m + ".k_proj"), lin(x, m + ".v_proj")
                    k_shift = k
                    if mixer in ("h3", "h3_shift_only"):
                        sb, sc = sd[m + ".shift_kernel.B"], sd[m + ".shift_kernel.C"][0]
                        xs = torch.cat([torch.zeros(batch, d, 1, dtype=torch.float64), xs[..., :-1]], -1) \
                            + sb * k[..., None]
                        k_shift = (sc * xs).sum(-1) + sd[m + ".ssm_k_D"] * k
                    kh = k_shift.view(batch, h, p)  # channel = head * P + i
                    vh = v.view(batch, h, p)
                    kv = torch.einsum("bhi,bhj->bijh", kh, vh)  # (B, P, P, H)
                z = kv
                if mixer != "h3_shift_only":
                    dt = torch.exp(sd[m + ".kernel.log_dt"])[:, None]
                    a = torch.complex(-torch.exp(sd[m + ".kernel.inv_A_real"]), sd[m + ".kernel.A_imag"])
                    bb = torch.view_as_complex(sd[m + ".kernel.B"].contiguous())
                    cc = torch.view_as_complex(sd[m + ".kernel.C"].contiguous())[0]
                    if cfg.discretization == "bilinear":
                        da = (1 + dt * a / 2) / (1 - dt * a / 2)
                        db = dt / (1 - dt * a / 2) * bb
                    else:
                        da = torch.exp(dt * a)
                        db = (da - 1) / a * bb
                    xd = da * xd + db * kv[..., None]
                    z = 2 * (cc * xd).sum(-1).real + sd[m + ".D"] * kv
                if mixer == "s4d":
                    y = torch.nn.functional.gelu(z.reshape(batch, d))
                else:
                    qh = q.view(batch, h, p)
                    y = torch.einsum("bhi,bijh->bjh", qh, z).reshape(batch, d)  # channel = j * H + head
                states[i] = (xs, xd)
                y = lin(y, m + ".output_linear")
            r = r + y
            r = r + lin(torch.nn.functional.gelu(lin(ln(r, pre + ".norm2"), pre + ".mlp.fc1"), approximate="tanh"),
                        pre + ".mlp.fc2")
        outputs.append(ln(r, "backbone.ln_f") @ sd["backbone.embeddings.weight"].T)
    return torch.stack(outputs, 1)


def randomize_ssm(model, seed=0):
    """Non-trivial shift B (not e_0) so the reference exercises the general shift-SSM formula."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("shift_kernel.B"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


@pytest.mark.parametrize("head_dim", [1, 2])
@pytest.mark.parametrize("attn", [[], [1]])
@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
def test_convolution_mode_equals_explicit_float64_recurrence(head_dim, attn, disc):
    torch.manual_seed(0)
    config = tiny_config(ssm_head_dim=head_dim, attn_layer_idx=attn, rotary_emb_dim=4 if attn else 0,
                         discretization=disc)
    model = H3ForCausalLM(config).double().eval()
    randomize_ssm(model)
    ids = torch.randint(0, 40, (2, 14))
    conv = model(ids, use_cache=False).logits
    ref = naive_h3_logits(model, ids)
    assert (conv - ref).abs().max() <= 1e-9


@pytest.mark.parametrize("mixer", ["s4d", "h3_shift_only", "h3_diag_only"])
@pytest.mark.parametrize("attn", [[], [1]])
def test_ablation_mixers_equal_explicit_float64_recurrence(mixer, attn):
    """The mixer_type options against the same token-by-token float64 reference (h3 is covered above)."""
    torch.manual_seed(1)
    head_dim = 1 if mixer == "s4d" else 2
    config = tiny_config(ssm_head_dim=head_dim, attn_layer_idx=attn, mixer_type=mixer,
                         discretization="zoh" if mixer == "s4d" else "bilinear")
    model = H3ForCausalLM(config).double().eval()
    randomize_ssm(model)
    ids = torch.randint(0, 40, (2, 14))
    conv = model(ids, use_cache=False).logits
    ref = naive_h3_logits(model, ids)
    assert torch.allclose(conv, ref, atol=1e-10, rtol=1e-9), (conv - ref).abs().max()
    names = {n.split("mixer.")[1] for n, _ in model.named_parameters() if ".mixer." in n and "layers.0." in n}
    expected = {"s4d": {"output_linear", "kernel", "D"},
                "h3_shift_only": {"q_proj", "k_proj", "v_proj", "shift_kernel", "ssm_k_D", "output_linear"},
                "h3_diag_only": {"q_proj", "k_proj", "v_proj", "kernel", "D", "output_linear"}}[mixer]
    assert {n.split(".")[0] for n in names} == expected


@pytest.mark.parametrize("head_dim,mixer", [(1, "h3"), (2, "h3"), (1, "s4d"), (2, "h3_shift_only"),
                                            (2, "h3_diag_only")])
@pytest.mark.parametrize("attn", [[], [0, 2]])
def test_prefill_then_steps_and_chunks_equal_full_pass_float32(head_dim, mixer, attn):
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config(ssm_head_dim=head_dim, attn_layer_idx=attn, mixer_type=mixer)).eval()
    ids = torch.randint(0, 40, (3, 20))
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :9], use_cache=True)
    cache, pieces = getattr(out, CACHE_FIELD), [out.logits]
    for t in range(9, 20):  # one token at a time: recurrent mode
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-5)
    assert cache.get_seq_length() == 20
    # chunks of several tokens: convolution continued from the cached states
    cache, pieces = None, []
    for start, stop in ((0, 3), (3, 4), (4, 13), (13, 20)):
        out = model(ids[:, start:stop], past_key_values=cache, use_cache=True)
        cache = getattr(out, CACHE_FIELD)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-5)


def test_state_is_constant_size_for_ssm_layers():
    model = H3ForCausalLM(tiny_config(attn_layer_idx=[1])).eval()
    cache = getattr(model(torch.randint(0, 40, (2, 30)), use_cache=True), CACHE_FIELD)
    shapes_before = [tuple(cache.layers[i].conv_states[0].shape) for i in (0, 2)]
    for _ in range(5):
        cache = getattr(model(torch.randint(0, 40, (2, 1)), past_key_values=cache, use_cache=True), CACHE_FIELD)
    assert [tuple(cache.layers[i].conv_states[0].shape) for i in (0, 2)] == shapes_before == [(2, 16, 8)] * 2
    assert tuple(cache.layers[0].recurrent_states[0].shape) == (2, 1, 1, 16, 4)
    assert cache.layers[1].keys.shape[-2] == 35  # the attention layer's KV cache grows


def test_logits_to_keep_and_loss():
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 40, (2, 10))
    full = model(ids, labels=ids)
    last = model(ids, logits_to_keep=1)
    torch.testing.assert_close(last.logits, full.logits[:, -1:])
    ref = torch.nn.functional.cross_entropy(full.logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(full.loss, ref)


def test_tied_embeddings_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config(attn_layer_idx=[1]))
    assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    ids = torch.randint(0, 40, (2, 12))
    model.train()
    ref = model(ids, labels=ids).loss
    ref.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    calls = []
    for block in model.backbone.layers:
        block.mixer.register_forward_hook(lambda *a: calls.append(1))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert len(calls) == 2 * 3, "checkpointed blocks must recompute their mixer in backward"
    torch.testing.assert_close(loss, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(ssm_head_dim=3), "ssm_head_dim"), (dict(attn_layer_idx=[3]), "attn_layer_idx"),
    (dict(attn_layer_idx=[-1]), "attn_layer_idx"), (dict(state_size=5), "state_size"),
    (dict(discretization="euler"), "discretization"), (dict(num_attention_heads=3, attn_layer_idx=[0]),
                                                       "num_attention_heads"),
    (dict(rotary_emb_dim=3, attn_layer_idx=[0]), "rotary_emb_dim"), (dict(dt_min=1.0), "dt_min"),
    (dict(mixer_type="mamba"), "mixer_type.*allowed values"), (dict(mixer_type="s4d", ssm_head_dim=2), "ssm_head_dim"),
    (dict(ssm_init="random"), "ssm_init"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


def test_bad_inputs_raise_clear_errors():
    model = H3ForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_vocab_is_padded_and_layer_types():
    cfg = H3Config(vocab_size=50257, attn_layer_idx=[6])
    assert cfg.vocab_size == 50264
    assert cfg.layer_types[6] == "full_attention" and cfg.layer_types.count("linear_attention") == 11


def test_dtype_loading_keeps_ssm_parameters_in_float32(tmp_path):
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config(attn_layer_idx=[1])).eval()
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


def test_eager_and_sdpa_attention_agree():
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config(attn_layer_idx=[0, 2], rotary_emb_dim=4)).eval()
    ids = torch.randint(0, 40, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    model.set_attn_implementation("sdpa")
    sdpa = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(eager[mask.bool()], sdpa[mask.bool()], rtol=0, atol=1e-5)


def test_loss_uses_num_items_in_batch():
    torch.manual_seed(0)
    model = H3ForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 40, (2, 10))
    out = model(ids, labels=ids, num_items_in_batch=torch.tensor(36))
    summed = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1),
                                               reduction="sum")
    torch.testing.assert_close(out.loss, summed / 36)
