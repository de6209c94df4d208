"""Equivalences of the H3, S4D and S5 models (hypothesis) over random small configs and inputs.

For every model family: convolution / scan = step-by-step recurrence, batched = unbatched, padded = unpadded,
save/load = identity; for H3 also cached = uncached generation and chunked prefill = whole prefill.
All numerical equivalences run in float64 with a tolerance of 1e-9 relative to the magnitude of the reference
(the observed errors are <= 2e-15), except the logits generate() returns, which it casts to float32; generated
tokens must be identical and save/load bit-exact. Configs and inputs are drawn by hypothesis; tensors that would be
slow to draw element by element come from a drawn seed.
"""

import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from references import naive_h3_logits, naive_s5, randomize_ssm

from h3_hf import (
    H3Cache,
    H3Config,
    H3ForCausalLM,
    S4DConfig,
    S4DForSequenceClassification,
    S5Config,
    S5ForSequenceClassification,
)
from h3_hf.modeling_h3 import CACHE_FIELD

TOL = 1e-9
GENERATE_TOL = 2 * torch.finfo(torch.float32).eps  # generate() hands back float64 logits rounded to float32
SEEDS = st.integers(0, 2**16)


def examples(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), f"max abs error {err:.3e}"


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def random_ids(draw, vocab: int, batch: int, length: int) -> torch.Tensor:
    values = draw(st.lists(st.integers(0, vocab - 1), min_size=batch * length, max_size=batch * length))
    return torch.tensor(values, dtype=torch.long).view(batch, length)


def padding_mask(lengths: list[int], width: int, side: str) -> torch.Tensor:
    """(batch, width) 0/1 mask with row i valid on ``lengths[i]`` positions at the right or left end."""
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, slice(0, n) if side == "right" else slice(width - n, width)] = 1
    return mask


def config_fields(config) -> dict:
    """The config as a dict, without the folder it was loaded from."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def assert_identical_models(loaded, model):
    assert type(loaded) is type(model) and not loaded.training
    assert config_fields(loaded.config) == config_fields(model.config)
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert set(state) == set(reloaded)
    for name, tensor in state.items():
        assert reloaded[name].dtype == tensor.dtype and torch.equal(reloaded[name], tensor), name


def valid_slice(mask_row: torch.Tensor) -> slice:
    where = mask_row.nonzero()[:, 0]
    return slice(int(where[0]), int(where[-1]) + 1)


# ---------------------------------------------------------------- H3 ----------------------------------------------

@st.composite
def h3_configs(draw):
    """H3Config kwargs: width 4-16, 1-3 layers, state 2-8, head_dim 1/2, every mixer, optional attention layers."""
    mixer = draw(st.sampled_from(["h3", "h3", "h3_shift_only", "h3_diag_only", "s4d"]))
    head_dim = 1 if mixer == "s4d" else draw(st.sampled_from([1, 2]))
    hidden = draw(st.integers(4, 16).filter(lambda d: d % head_dim == 0))
    layers = draw(st.integers(1, 3))
    attn = sorted(draw(st.sets(st.integers(0, layers - 1), min_size=1, max_size=layers))) \
        if draw(st.booleans()) else []
    heads = draw(st.sampled_from(divisors(hidden)))
    rotary = draw(st.sampled_from(list(range(0, hidden // heads + 1, 2)))) if attn else 0
    return dict(vocab_size=draw(st.integers(5, 40)), hidden_size=hidden, num_hidden_layers=layers,
                state_size=draw(st.sampled_from([2, 4, 6, 8])), ssm_head_dim=head_dim, mixer_type=mixer,
                attn_layer_idx=attn, num_attention_heads=heads, rotary_emb_dim=rotary,
                intermediate_size=draw(st.sampled_from([None, 2 * hidden])),
                discretization=draw(st.sampled_from(["zoh", "bilinear"])),
                ssm_init=draw(st.sampled_from([None, "lin", "inv", "legs"])),
                kernel_chunk_size=draw(st.sampled_from([None, 1, 2, 5])),
                dt_min=0.01, dt_max=draw(st.sampled_from([0.1, 0.5, 1.0])),
                embedding_dropout=0.0, pad_vocab_size_multiple=1, pad_token_id=0)


def draw_h3(data) -> H3ForCausalLM:
    """A drawn float64 model with sharpened random weights, so every logit and greedy choice depends on the state."""
    kwargs = data.draw(h3_configs(), "config")
    seed = data.draw(SEEDS, "seed")
    torch.manual_seed(seed)
    model = H3ForCausalLM(H3Config(**kwargs)).eval()
    with torch.no_grad():
        model.backbone.embeddings.weight.normal_(0, 1.0)
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "Wqkv.weight",
                              "output_linear.weight", "out_proj.weight")):
                param.normal_(0, 0.5)
    randomize_ssm(model, seed)  # shift B not e_0: the general shift-SSM formula
    model = model.double()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # every sequence runs to max_new_tokens
    return model


def greedy(model: H3ForCausalLM, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, **kw):
    """Greedy generation; the mask is always explicit (a random prompt may contain the pad id)."""
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, **kw)


def assert_same_generation(out, ref, rows=slice(None), ref_rows=slice(None), new_tokens=None):
    assert torch.equal(out.sequences[rows, -new_tokens:], ref.sequences[ref_rows, -new_tokens:])
    assert_close(torch.stack(out.logits, 1)[rows], torch.stack(ref.logits, 1)[ref_rows], GENERATE_TOL)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions of a left-padded batch: 0 at each row's first valid token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@given(st.data())
@examples(30)
@torch.no_grad()
def test_h3_convolution_equals_recurrence(data):
    model = draw_h3(data)
    batch, length = data.draw(st.integers(1, 3), "batch"), data.draw(st.integers(1, 24), "length")
    ids = random_ids(data.draw, model.config.vocab_size, batch, length)
    conv = model(ids, use_cache=False).logits
    cache, pieces = H3Cache(config=model.config), []
    for t in range(length):  # recurrent mode: one token per call
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        assert getattr(out, CACHE_FIELD) is cache
        pieces.append(out.logits)
    assert cache.get_seq_length() == length
    assert_close(torch.cat(pieces, 1), conv)
    assert_close(naive_h3_logits(model, ids), conv)  # the independent float64 loop of the equations


@given(st.data())
@examples(15)
@torch.no_grad()
def test_h3_generate_cached_equals_uncached(data):
    model = draw_h3(data)
    batch, length = data.draw(st.integers(1, 3), "batch"), data.draw(st.integers(1, 12), "length")
    ids = random_ids(data.draw, model.config.vocab_size, batch, length)
    new_tokens = data.draw(st.integers(1, 6), "new_tokens")
    mask = torch.ones_like(ids)
    cached = greedy(model, ids, mask, new_tokens, use_cache=True)
    uncached = greedy(model, ids, mask, new_tokens, use_cache=False)
    assert cached.sequences.shape == (batch, length + new_tokens)
    assert_same_generation(cached, uncached, new_tokens=new_tokens)


@given(st.data())
@examples(15)
@torch.no_grad()
def test_h3_batched_equals_unbatched(data):
    model = draw_h3(data)
    batch, length = data.draw(st.integers(2, 3), "batch"), data.draw(st.integers(1, 24), "length")
    ids = random_ids(data.draw, model.config.vocab_size, batch, length)
    logits = model(ids).logits
    for i in range(batch):
        assert_close(logits[i], model(ids[i:i + 1]).logits[0])


@given(st.data())
@examples(15)
@torch.no_grad()
def test_h3_left_padded_batch_equals_each_prompt_alone(data):
    model = draw_h3(data)
    lengths = data.draw(st.lists(st.integers(1, 12), min_size=2, max_size=3), "lengths")
    width = max(lengths) + data.draw(st.integers(0, 3), "extra_padding")
    ids = random_ids(data.draw, model.config.vocab_size, len(lengths), width)  # the padding holds random tokens
    mask = padding_mask(lengths, width, "left")
    logits = model(ids, attention_mask=mask, position_ids=positions(mask)).logits
    new_tokens = data.draw(st.integers(1, 5), "new_tokens")
    generated = greedy(model, ids, mask, new_tokens)
    for i, n in enumerate(lengths):
        alone_ids = ids[i:i + 1, width - n:]
        assert_close(logits[i, width - n:], model(alone_ids).logits[0])
        alone = greedy(model, alone_ids, torch.ones_like(alone_ids), new_tokens)
        assert_same_generation(generated, alone, rows=slice(i, i + 1), new_tokens=new_tokens)


@given(st.data())
@examples(20)
@torch.no_grad()
def test_h3_chunked_prefill_equals_whole_prefill(data):
    model = draw_h3(data)
    batch, length = data.draw(st.integers(1, 3), "batch"), data.draw(st.integers(2, 24), "length")
    ids = random_ids(data.draw, model.config.vocab_size, batch, length)
    lengths = [data.draw(st.integers(1, length), "valid") if data.draw(st.booleans(), "pad") else length
               for _ in range(batch)]
    mask = padding_mask(lengths, length, "left")
    whole = model(ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits
    cuts = sorted(data.draw(st.sets(st.integers(1, length - 1), min_size=1), "cuts"))
    cache, pieces = None, []
    for start, stop in zip([0] + cuts, cuts + [length]):  # chunks continue from the cached states
        out = model(ids[:, start:stop], attention_mask=mask[:, :stop], position_ids=positions(mask)[:, start:stop],
                    past_key_values=cache, use_cache=True)
        cache = getattr(out, CACHE_FIELD)
        pieces.append(out.logits)
    keep = mask.bool()
    assert_close(torch.cat(pieces, 1)[keep], whole[keep])
    new_tokens = data.draw(st.integers(1, 4), "new_tokens")
    chunk = data.draw(st.integers(1, length), "prefill_chunk_size")
    reference = greedy(model, ids, mask, new_tokens)
    chunked = greedy(model, ids, mask, new_tokens, prefill_chunk_size=chunk)
    assert_same_generation(chunked, reference, new_tokens=new_tokens)


@given(st.data())
@examples(10)
@torch.no_grad()
def test_h3_save_load_is_identity(data):
    model = draw_h3(data)
    ids = random_ids(data.draw, model.config.vocab_size, data.draw(st.integers(1, 3)), data.draw(st.integers(1, 24)))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = H3ForCausalLM.from_pretrained(folder)
    assert_identical_models(loaded, model)
    assert_same_up_to_blas(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------- S4D and S5 --------------------------------------

def input_kind(draw) -> dict:
    """Token inputs (vocab_size) or real-valued ones (input_size)."""
    if draw(st.booleans(), "tokens"):
        return dict(vocab_size=draw(st.integers(2, 20), "vocab_size"))
    return dict(input_size=draw(st.integers(1, 4), "input_size"))


def common_classifier_kwargs(draw) -> dict:
    return dict(hidden_size=draw(st.integers(4, 16)), num_hidden_layers=draw(st.integers(1, 3)),
                discretization=draw(st.sampled_from(["zoh", "bilinear"])), dt_min=0.01,
                dt_max=draw(st.sampled_from([0.1, 0.5, 1.0])), dropout=draw(st.sampled_from([0.0, 0.3])),
                prenorm=draw(st.booleans()), pooling=draw(st.sampled_from(["mean", "last"])),
                num_labels=draw(st.integers(1, 4)), **input_kind(draw))


@st.composite
def s4d_configs(draw, bidirectional=None):
    """S4DConfig kwargs: width 4-16, 1-3 layers, state 2-8, every init and discretization, tokens or reals."""
    return dict(state_size=draw(st.sampled_from([2, 4, 6, 8])), init=draw(st.sampled_from(["inv", "lin", "legs"])),
                bidirectional=draw(st.booleans()) if bidirectional is None else bidirectional,
                kernel_chunk_size=draw(st.sampled_from([None, 1, 3])), **common_classifier_kwargs(draw))


@st.composite
def s5_configs(draw, bidirectional=None):
    """S5Config kwargs: width 4-16, 1-3 layers, state 2-8, every block count the state allows, conj_sym or not."""
    state = draw(st.sampled_from([2, 4, 6, 8]))
    conj_sym = draw(st.booleans())
    blocks = draw(st.sampled_from([j for j in divisors(state) if not conj_sym or (state // j) % 2 == 0]))
    return dict(state_size=state, blocks=blocks, conj_sym=conj_sym, clip_eigs=draw(st.booleans()),
                C_init=draw(st.sampled_from(["trunc_standard_normal", "lecun_normal", "complex_normal"])),
                step_rescale=draw(st.sampled_from([1.0, 0.5, 2.0])),
                bidirectional=draw(st.booleans()) if bidirectional is None else bidirectional,
                activation=draw(st.sampled_from(["half_glu1", "half_glu2", "full_glu", "gelu"])),
                scan_chunk_size=draw(st.sampled_from([None, 1, 3, 7])), **common_classifier_kwargs(draw))


CLASSIFIERS = {"s4d": (s4d_configs, S4DConfig, S4DForSequenceClassification),
               "s5": (s5_configs, S5Config, S5ForSequenceClassification)}


def draw_classifier(data, kind: str, **strategy_kwargs):
    """A drawn float64 classifier in eval mode (dropout off) and its config."""
    strategy, config_class, model_class = CLASSIFIERS[kind]
    kwargs = data.draw(strategy(**strategy_kwargs), "config")
    torch.manual_seed(data.draw(SEEDS, "seed"))
    model = model_class(config_class(**kwargs)).double().eval()
    return model, model.config


def random_inputs(draw, config, batch: int, length: int) -> dict:
    """input_ids, or float64 inputs_embeds from a drawn seed."""
    if config.vocab_size is not None:
        return dict(input_ids=random_ids(draw, config.vocab_size, batch, length))
    g = torch.Generator().manual_seed(draw(SEEDS, "inputs_seed"))
    return dict(inputs_embeds=torch.randn(batch, length, config.input_size, generator=g, dtype=torch.float64))


def take(inputs: dict, rows, cols) -> dict:
    return {k: v[rows, cols] for k, v in inputs.items()}


def backbone(model):
    return model.s4d if isinstance(model, S4DForSequenceClassification) else model.s5


def stream(model, inputs: dict, timesteps: torch.Tensor | None = None):
    """Classifier logits and final hidden states computed position by position with each layer's ``step``."""
    body = backbone(model)
    x = body.encoder(next(iter(inputs.values())))
    batch, length, _ = x.shape
    states = [block.layer.initial_state(batch) for block in body.layers]
    outs = []
    for t in range(length):
        h = x[:, t]
        for i, block in enumerate(body.layers):
            z = block.norm(h) if block.prenorm else h
            extra = () if timesteps is None else (timesteps[:, t],)
            y, states[i] = block.layer.step(z, states[i], *extra)
            h = h + y
            h = h if block.prenorm else block.norm(h)
        outs.append(body.norm_f(h))
    hidden = torch.stack(outs, 1)
    pooled = hidden.mean(1) if model.config.pooling == "mean" else hidden[:, -1]
    return model.score(pooled), hidden, states


def record_inputs(modules) -> tuple[list, list]:
    """Forward hooks that keep the first positional input and the output of each module."""
    seen, handles = [], []
    for module in modules:
        handles.append(module.register_forward_hook(lambda mod, args, out: seen.append((args[0], out))))
    return seen, handles


@given(st.data())
@examples(30)
@torch.no_grad()
def test_s4d_convolution_equals_recurrence(data):
    model, config = draw_classifier(data, "s4d", bidirectional=False)
    inputs = random_inputs(data.draw, config, data.draw(st.integers(1, 3), "batch"),
                           data.draw(st.integers(1, 24), "length"))
    layers = [block.layer for block in model.s4d.layers]
    seen, handles = record_inputs(layers)
    try:
        logits = model(**inputs).logits
        hidden = model.s4d(**inputs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    stream_logits, stream_hidden, states = stream(model, inputs)
    assert_close(stream_hidden, hidden)
    assert_close(stream_logits, logits)
    for layer, (layer_input, _), state in zip(layers, seen, states):  # closed-form prefill state = stepped state
        assert_close(torch.view_as_real(layer.final_state(layer_input)), torch.view_as_real(state))


@given(st.data())
@examples(40)
@torch.no_grad()
def test_s5_scan_equals_recurrence(data):
    model, config = draw_classifier(data, "s5")
    batch, length = data.draw(st.integers(1, 3), "batch"), data.draw(st.integers(1, 24), "length")
    inputs = random_inputs(data.draw, config, batch, length)
    timesteps = None
    if data.draw(st.booleans(), "irregular"):
        g = torch.Generator().manual_seed(data.draw(SEEDS, "timesteps_seed"))
        timesteps = torch.rand(batch, length, generator=g, dtype=torch.float64) * 2 + 0.1
    seen, handles = record_inputs([block.layer.ssm for block in model.s5.layers])
    try:
        logits = model(**inputs, timesteps=timesteps).logits
        hidden = model.s5(**inputs, timesteps=timesteps).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    for block, (u, y) in zip(model.s5.layers, seen):  # every layer's scan = the float64 loop of the equations
        assert_close(y, naive_s5(block.layer.ssm, u, timesteps))
    if not config.bidirectional:  # the model run position by position with each layer's step
        stream_logits, stream_hidden, _ = stream(model, inputs, timesteps)
        assert_close(stream_hidden, hidden)
        assert_close(stream_logits, logits)


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
@given(data=st.data())
@examples(15)
@torch.no_grad()
def test_classifier_batched_equals_unbatched(data, kind):
    model, config = draw_classifier(data, kind)
    batch, length = data.draw(st.integers(2, 3), "batch"), data.draw(st.integers(1, 24), "length")
    inputs = random_inputs(data.draw, config, batch, length)
    logits = model(**inputs).logits
    for i in range(batch):
        assert_close(logits[i], model(**take(inputs, slice(i, i + 1), slice(None))).logits[0])


def check_padded_equals_unpadded(data, kind: str, side: str, irregular: bool = False):
    """Rows of random lengths padded to a common width (right or left, random values in the padding) with an
    attention_mask give each row's logits alone; S5 optionally with irregular timesteps."""
    model, config = draw_classifier(data, kind)
    lengths = data.draw(st.lists(st.integers(1, 16), min_size=1, max_size=3), "lengths")
    width = max(lengths) + data.draw(st.integers(0, 4), "extra_padding")
    inputs = random_inputs(data.draw, config, len(lengths), width)  # the padding holds random values
    mask = padding_mask(lengths, width, side)
    timesteps = None
    if irregular:
        g = torch.Generator().manual_seed(data.draw(SEEDS, "timesteps_seed"))
        timesteps = torch.rand(len(lengths), width, generator=g, dtype=torch.float64) * 2 + 0.1
    extra = {} if timesteps is None else dict(timesteps=timesteps)
    logits = model(**inputs, attention_mask=mask, **extra).logits
    for i in range(len(lengths)):
        cols = valid_slice(mask[i])
        alone_extra = {} if timesteps is None else dict(timesteps=timesteps[i:i + 1, cols])
        assert_close(logits[i], model(**take(inputs, slice(i, i + 1), cols), **alone_extra).logits[0])


@pytest.mark.parametrize("side", ["right", "left"])
@given(data=st.data())
@examples(15)
@torch.no_grad()
def test_s4d_padded_equals_unpadded(data, side):
    check_padded_equals_unpadded(data, "s4d", side)


@pytest.mark.parametrize("irregular", [False, True], ids=["regular", "timesteps"])
@pytest.mark.parametrize("side", ["right", "left"])
@given(data=st.data())
@examples(12)
@torch.no_grad()
def test_s5_padded_equals_unpadded(data, side, irregular):
    check_padded_equals_unpadded(data, "s5", side, irregular)


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
@given(data=st.data())
@examples(8)
@torch.no_grad()
def test_classifier_save_load_is_identity(data, kind):
    model, config = draw_classifier(data, kind)
    lengths = data.draw(st.lists(st.integers(1, 16), min_size=1, max_size=3), "lengths")
    inputs = random_inputs(data.draw, config, len(lengths), max(lengths))
    mask = padding_mask(lengths, max(lengths), "right")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = type(model).from_pretrained(folder)
    assert_identical_models(loaded, model)
    assert_same_up_to_blas(loaded(**inputs, attention_mask=mask).logits, model(**inputs, attention_mask=mask).logits)


# ---------------------------------------------------------------- memory layout -----------------------------------

def assert_same_up_to_blas(actual: torch.Tensor, expected: torch.Tensor):
    """Equal to float64 rounding: BLAS may choose another kernel (another summation order) for operands at another
    memory alignment, as ``from_pretrained`` leaves them, so the last bits of a matmul can differ."""
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def at_8_byte_alignment(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in a storage that starts 8 bytes past a 16-byte boundary, where ``from_pretrained`` leaves
    parameters it maps straight from a safetensors file."""
    nbytes = t.numel() * t.element_size()
    raw = bytearray(nbytes + 16)
    start = torch.frombuffer(raw, dtype=torch.uint8).data_ptr()
    out = torch.frombuffer(raw, dtype=t.dtype, count=t.numel(), offset=(8 - start % 16) % 16).view(t.shape)
    assert out.data_ptr() % 16 == 8 and out.storage_offset() == 0
    return out.copy_(t)


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
@given(data=st.data())
@examples(6)
@torch.no_grad()
def test_float64_parameters_at_8_byte_alignment_compute_the_same(data, kind):
    """A complex128 view of such a parameter must not crash BLAS (a float64 S5 loaded from a file)."""
    if kind == "h3":
        model = draw_h3(data)
        inputs = dict(input_ids=random_ids(data.draw, model.config.vocab_size, data.draw(st.integers(1, 3)),
                                           data.draw(st.integers(1, 24))))
    else:
        model, config = draw_classifier(data, kind)
        inputs = random_inputs(data.draw, config, data.draw(st.integers(1, 3)), data.draw(st.integers(1, 24)))
    reference = model(**inputs).logits
    for param in model.parameters():
        param.data = at_8_byte_alignment(param.data)
    assert_same_up_to_blas(model(**inputs).logits, reference)
