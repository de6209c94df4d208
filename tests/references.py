"""Independent float64 references written from the models' equations, with no FFT, no scan and no cache object.

Step-by-step loops of the diagonal SSM, the S5 SSM and the H3 language model (token by token).
"""

import math

import torch

from h3_hf import H3ForCausalLM
from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.modeling_s5 import S5SSM


def naive_discrete(kernel: DiagonalSSMKernel):
    """dA, dB, C straight from the formulas in the spec, float64/complex128."""
    dt = torch.exp(kernel.log_dt.detach().double())[:, None]
    a = torch.complex(-torch.exp(kernel.inv_A_real.detach().double()), kernel.A_imag.detach().double())
    b = torch.view_as_complex(kernel.B.detach().double().contiguous())
    c = torch.view_as_complex(kernel.C.detach().double().contiguous())
    if kernel.discretization == "zoh":
        da = torch.exp(dt * a)
        db = (da - 1) / a * b
    else:
        da = (1 + dt * a / 2) / (1 - dt * a / 2)
        db = dt / (1 - dt * a / 2) * b
    return da, db, c


def naive_run(u, da, db, c, d=None, x0=None):
    """Explicit loop: x_t = dA x_{t-1} + dB u_t, y_t = 2 Re sum C x_t (+ D u_t). u (B, H, L)."""
    x = torch.zeros(u.shape[0], *da.shape, dtype=torch.complex128) if x0 is None else x0.clone()
    ys = []
    for t in range(u.shape[-1]):
        x = da * x + db * u[..., t, None]
        y = 2 * (c * x).sum(-1).real
        if d is not None:
            y = y + d * u[..., t]
        ys.append(y)
    return torch.stack(ys, -1), x


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


def token_weight_matrix(w) -> torch.Tensor:
    """The (out_features, in_features) weight a ``TokenWeight`` holds, reassembled from its slices."""
    if not w.transposed:
        return w.weight.reshape(w.out_features, -1)
    return w.weight.transpose(0, 1).reshape(w.weight.shape[1], -1)[:, :w.out_features].t()
