"""The official-checkpoint converter, on state dicts built from the spec's key listing (spec/h3.md)."""

import os
import sys

import pytest
import torch

from h3_hf import H3ForCausalLM
from h3_hf.conversion import convert_checkpoint, load_official_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import convert_h3_original_checkpoint  # noqa: E402

D, N, V, LAYERS, ATTN, HEADS = 16, 8, 24, 3, 1, 2


def official_state_dict(seed=0, rotary=True):
    """Random tensors with the official names and shapes (new layout, tied lm_head included)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    sd = {"backbone.embeddings.word_embeddings.weight": r(V, D, scale=1.0)}
    for i in range(LAYERS):
        p = f"backbone.layers.{i}."
        for norm in ("norm1", "norm2"):
            sd[p + norm + ".weight"] = 1 + r(D, scale=0.1)
            sd[p + norm + ".bias"] = r(D, scale=0.1)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = r(4 * D, D), r(4 * D)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = r(D, 4 * D), r(D)
        m = p + "mixer."
        if i == ATTN:
            sd[m + "Wqkv.weight"], sd[m + "Wqkv.bias"] = r(3 * D, D), r(3 * D)
            sd[m + "out_proj.weight"], sd[m + "out_proj.bias"] = r(D, D), r(D)
            if rotary:
                sd[m + "rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 4, 2).float() / 4)
        else:
            for proj in ("q_proj", "k_proj", "v_proj", "output_linear"):
                sd[m + proj + ".weight"], sd[m + proj + ".bias"] = r(D, D), r(D)
            sd[m + "ssm_k_kernel.kernel.B"] = r(D, N)
            sd[m + "ssm_k_kernel.kernel.C"] = r(1, D, N)
            sd[m + "ssm_k_D"] = r(D)
            sd[m + "kernel.kernel.log_dt"] = torch.log(torch.rand(D, generator=g) * 0.3 + 0.05)
            sd[m + "kernel.kernel.inv_A_real"] = r(D, N // 2)
            sd[m + "kernel.kernel.A_imag"] = torch.rand(D, N // 2, generator=g) * 3
            sd[m + "kernel.kernel.B"] = r(D, N // 2, 2, scale=1.0)
            sd[m + "kernel.kernel.C"] = r(1, D, N // 2, 2, scale=1.0)
            sd[m + "D"] = r(D)
    sd["backbone.ln_f.weight"], sd["backbone.ln_f.bias"] = 1 + r(D, scale=0.1), r(D, scale=0.1)
    sd["lm_head.weight"] = sd["backbone.embeddings.word_embeddings.weight"]
    return sd


def old_layout(sd):
    """The same model in the older post-norm naming (the inverse of the spec's LN shuffle)."""
    old = {}
    for k, v in sd.items():
        if ".norm1." in k or ".norm2." in k or k.startswith("backbone.ln_f") or k == "lm_head.weight":
            continue
        old[k.replace("backbone.embeddings.word_embeddings.", "embedding.").replace("backbone.", "s4seq.encoder.")] = v
    for part in ("weight", "bias"):
        old[f"s4seq.encoder.norm.{part}"] = sd[f"backbone.layers.0.norm1.{part}"]
        for i in range(LAYERS):
            old[f"s4seq.encoder.layers.{i}.norm1.{part}"] = sd[f"backbone.layers.{i}.norm2.{part}"]
            nxt = f"backbone.layers.{i + 1}.norm1.{part}" if i + 1 < LAYERS else f"backbone.ln_f.{part}"
            old[f"s4seq.encoder.layers.{i}.norm2.{part}"] = sd[nxt]
    return old


def h3_layer_by_hand(sd, layer, x):
    """One official H3 mixer (head_dim 1, bilinear) from the official tensors, explicit loop. x (L, D)."""
    m = f"backbone.layers.{layer}.mixer."
    sd = {k: v.double() for k, v in sd.items() if k.startswith(m)}
    x = x.double()
    q = x @ sd[m + "q_proj.weight"].T + sd[m + "q_proj.bias"]
    k = x @ sd[m + "k_proj.weight"].T + sd[m + "k_proj.bias"]
    v = x @ sd[m + "v_proj.weight"].T + sd[m + "v_proj.bias"]
    b, c = sd[m + "ssm_k_kernel.kernel.B"], sd[m + "ssm_k_kernel.kernel.C"][0]
    dt = torch.exp(sd[m + "kernel.kernel.log_dt"])[:, None]
    a = torch.complex(-torch.exp(sd[m + "kernel.kernel.inv_A_real"]), sd[m + "kernel.kernel.A_imag"])
    da = (1 + dt * a / 2) / (1 - dt * a / 2)
    db = dt / (1 - dt * a / 2) * torch.view_as_complex(sd[m + "kernel.kernel.B"].contiguous())
    cc = torch.view_as_complex(sd[m + "kernel.kernel.C"].contiguous())[0]
    xs = torch.zeros(D, N, dtype=torch.float64)
    xd = torch.zeros(D, N // 2, dtype=torch.complex128)
    ys = []
    for t in range(x.shape[0]):
        xs = torch.cat([torch.zeros(D, 1, dtype=torch.float64), xs[:, :-1]], 1) + b * k[t, :, None]
        ks = (c * xs).sum(1) + sd[m + "ssm_k_D"] * k[t]
        kv = ks * v[t]
        xd = da * xd + db * kv[:, None]
        ys.append(q[t] * (2 * (cc * xd).sum(1).real + sd[m + "D"] * kv))
    y = torch.stack(ys)
    return y @ sd[m + "output_linear.weight"].T + sd[m + "output_linear.bias"]


def convert(tmp_path, obj, name):
    path = tmp_path / f"{name}.pt"
    torch.save(obj, path)
    out = tmp_path / name
    convert_h3_original_checkpoint.main(["--checkpoint", str(path), "--output", str(out),
                                         "--num-attention-heads", str(HEADS)])
    return H3ForCausalLM.from_pretrained(out).eval(), out


def test_weights_land_where_the_spec_says(tmp_path):
    sd = official_state_dict()
    model, out = convert(tmp_path, sd, "new")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size, cfg.ssm_head_dim) == (D, LAYERS, N, 1)
    assert cfg.attn_layer_idx == [ATTN] and cfg.rotary_emb_dim == 4 and cfg.vocab_size == V
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    mixer = model.backbone.layers[0].mixer
    assert torch.equal(mixer.shift_kernel.B, sd["backbone.layers.0.mixer.ssm_k_kernel.kernel.B"])
    assert torch.equal(mixer.kernel.C, sd["backbone.layers.0.mixer.kernel.kernel.C"])
    assert torch.equal(model.lm_head.weight, sd["backbone.embeddings.word_embeddings.weight"])
    x = torch.randn(12, D)
    with torch.no_grad():
        ours = mixer(x[None])[0]
    torch.testing.assert_close(ours.double(), h3_layer_by_hand(sd, 0, x), rtol=1e-4, atol=1e-4)


def test_old_layout_and_lightning_wrapper_give_the_same_model(tmp_path):
    sd = official_state_dict(seed=1)
    new, _ = convert(tmp_path, sd, "new")
    lightning = {"pytorch-lightning_version": "1.6.0", "state_dict": {"model." + k: v for k, v in sd.items()}}
    wrapped, _ = convert(tmp_path, lightning, "lightning")
    old, _ = convert(tmp_path, old_layout(sd), "old")
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        ref = new(ids).logits
        assert torch.equal(wrapped(ids).logits, ref)
        assert torch.equal(old(ids).logits, ref)


class CodeOnLoad:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "model.pt", tmp_path / "pwned"
    torch.save({**official_state_dict(), "extra": CodeOnLoad(marker)}, path)
    with pytest.raises(ValueError, match=r"refused by torch.load\(weights_only=True\)"):
        load_official_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd.pop("backbone.layers.0.mlp.fc1.weight"), "no tensor 'backbone.layers.0.mlp.fc1.weight'"),
    (lambda sd: sd.pop("backbone.layers.0.mixer.kernel.kernel.log_dt"), "kernel.kernel.log_dt"),
    (lambda sd: sd.update({"backbone.layers.0.mlp.fc2.weight": torch.zeros(3, 3)}), "tensor shapes do not fit"),
    (lambda sd: sd.update({"backbone.layers.0.mixer.surprise": torch.zeros(1)}), "unexpected 'backbone.layers.0"),
    (lambda sd: sd.update({"backbone.embeddings.word_embeddings.weight": torch.zeros(4)}), "has shape (4,)"),
])
def test_a_damaged_state_dict_raises_a_clear_value_error(damage, words):
    sd = official_state_dict()
    damage(sd)
    with pytest.raises(ValueError) as err:
        convert_checkpoint(sd, num_attention_heads=HEADS)
    assert words in str(err.value) and "expected an official H3 model.pt" in str(err.value)
    assert "\n" not in str(err.value)


def test_old_layout_without_its_first_norm_raises_a_clear_value_error():
    old = old_layout(official_state_dict())
    del old["s4seq.encoder.norm.weight"]  # its bias still marks the older layout
    with pytest.raises(ValueError, match="no tensor 'backbone.norm.weight'"):
        convert_checkpoint(old, num_attention_heads=HEADS)
