"""The behaviours transformers' own model tests expect of every in-tree model.

Output flags from the config, attention weights from hybrids, from_config dtypes, ``head_dim``, torch.export /
compile, resized vocabularies that reload, 0/1 attention masks, and input values checked at the boundary only.
"""

import copy
import json

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from tiny_models import h3_hybrid_config
from transformers import AutoModelForCausalLM

from h3_hf import (
    H3Config,
    H3ForCausalLM,
    H3Model,
    S4DForSequenceClassification,
    S4DModel,
    S5ForSequenceClassification,
    S5Model,
)
from h3_hf.modeling_h3 import CACHE_FIELD


def h3_config(**overrides):
    """A wider hybrid than tiny_models' (width 32, 3 layers, 4 attention heads, SSM heads of width 2), vocabulary 64."""
    return h3_hybrid_config(**{**dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, ssm_head_dim=2,
                                      num_attention_heads=4), **overrides})


def s4d_config(**overrides):
    """S4D over tokens with the default dropout."""
    return tiny_models.s4d_config(**{**dict(vocab_size=20, dropout=0.1), **overrides})


def s5_config(**overrides):
    """S5 over tokens with the default dropout and number of blocks."""
    return tiny_models.s5_config(**{**dict(vocab_size=20, blocks=4, dropout=0.1), **overrides})


def ids_and_mask(vocab=20, batch=2, length=10):
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    return ids, mask


# ---- 1. output flags default to the config ----

@pytest.mark.parametrize("model_cls,config_fn", [(H3Model, h3_config), (H3ForCausalLM, h3_config),
                                                 (S4DModel, s4d_config), (S5Model, s5_config),
                                                 (S4DForSequenceClassification, s4d_config),
                                                 (S5ForSequenceClassification, s5_config)])
def test_output_hidden_states_comes_from_the_config_unless_the_keyword_is_given(model_cls, config_fn):
    torch.manual_seed(0)
    model = model_cls(config_fn()).eval()
    ids, _ = ids_and_mask()
    assert model(ids).hidden_states is None
    model.config.output_hidden_states = True
    hidden = model(ids).hidden_states
    assert hidden is not None and len(hidden) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(hidden, model(ids, output_hidden_states=True).hidden_states, rtol=0, atol=0)
    assert model(ids, output_hidden_states=False).hidden_states is None


# ---- 2. attention weights of a hybrid ----

def reference_attention_weights(model: H3ForCausalLM, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(head_dim) + causal mask) of one attention layer, from its input hidden state
    (no rotary: rotary_emb_dim = 0). (batch, heads, length, length)."""
    block = model.backbone.layers[layer]
    h_in = model(ids, output_hidden_states=True).hidden_states[layer].double()
    normed = F.layer_norm(h_in, (h_in.shape[-1],), block.norm1.weight.double(), block.norm1.bias.double(),
                          block.norm1.eps)
    qkv = F.linear(normed, block.mixer.Wqkv.weight.double(), block.mixer.Wqkv.bias.double())
    b, length, _ = qkv.shape
    heads, hd = model.config.num_attention_heads, model.config.head_dim
    q, k, _ = qkv.view(b, length, 3, heads, hd).unbind(2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd**0.5
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_hybrid_returns_the_weights_of_its_attention_layers(attn_implementation):
    torch.manual_seed(0)
    config = h3_config(num_hidden_layers=4, attn_layer_idx=[1, 3])
    model = H3ForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()
    ids, _ = ids_and_mask(vocab=64)
    attentions = model(ids, output_attentions=True).attentions
    assert len(attentions) == 2
    for weights, layer in zip(attentions, (1, 3)):
        torch.testing.assert_close(weights.double(), reference_attention_weights(model, ids, layer), rtol=1e-5,
                                   atol=1e-6)
    if attn_implementation == "eager":  # transformers' configs accept output_attentions=True with eager only
        model.config.output_attentions = True
        torch.testing.assert_close(model(ids).attentions, attentions, rtol=0, atol=0)
        assert model(ids, output_attentions=False).attentions is None
    # the logits do not depend on whether the weights were asked for
    torch.testing.assert_close(model(ids, output_attentions=False).logits, model(ids).logits, rtol=1e-6, atol=1e-6)


def test_generate_returns_attention_weights_per_step_equal_to_an_uncached_pass():
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_config()).eval()
    ids, _ = ids_and_mask(vocab=64, length=6)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, output_attentions=True,
                         return_dict_in_generate=True)
    assert len(out.attentions) == 3  # prefill + 2 decode steps, one attention layer each
    full = model(out.sequences, use_cache=False, output_attentions=True).attentions[0]
    torch.testing.assert_close(out.attentions[0][0], full[:, :, :6, :6], rtol=1e-5, atol=1e-6)
    for step in (1, 2):
        position = 6 + step - 1
        assert out.attentions[step][0].shape == (2, 4, 1, position + 1)
        torch.testing.assert_close(out.attentions[step][0][:, :, 0], full[:, :, position, :position + 1],
                                   rtol=1e-5, atol=1e-6)


def test_pure_ssm_model_returns_an_empty_attentions_tuple():
    model = H3ForCausalLM(h3_config(attn_layer_idx=[])).eval()
    assert model(ids_and_mask(vocab=64)[0], output_attentions=True).attentions == ()


# ---- 3. from_config keeps the SSM parameters float32 like from_pretrained ----

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_config_keeps_ssm_parameters_float32_like_from_pretrained(dtype, tmp_path):
    config = h3_config()
    H3ForCausalLM(config).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    built = AutoModelForCausalLM.from_config(config, dtype=dtype)
    loaded_dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    built_dtypes = {name: p.dtype for name, p in built.named_parameters()}
    assert built_dtypes == loaded_dtypes
    assert built_dtypes["backbone.layers.0.mixer.kernel.log_dt"] == torch.float32
    assert built_dtypes["backbone.layers.0.mixer.shift_kernel.B"] == torch.float32
    assert built_dtypes["backbone.layers.0.mixer.q_proj.weight"] == dtype
    assert torch.isfinite(built(ids_and_mask(vocab=64)[0]).logits).all()


# ---- 4. head_dim is the attention head size ----

def test_head_dim_is_the_attention_head_size_and_the_kv_cache_has_it():
    config = h3_config(hidden_size=32, num_attention_heads=4, ssm_head_dim=2)
    assert (config.head_dim, config.ssm_head_dim) == (8, 2)
    model = H3ForCausalLM(config).eval()
    out = model(ids_and_mask(vocab=64)[0], use_cache=True)
    keys = out[CACHE_FIELD].layers[1].keys
    assert keys.shape[1:] == (config.num_attention_heads, 10, config.head_dim)
    with pytest.raises(ValueError, match="head_dim=4 is invalid"):
        h3_config(head_dim=4)


def test_config_saved_with_the_earlier_head_dim_field_loads_as_the_ssm_head_width(tmp_path):
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_config(ssm_head_dim=4)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["ssm_head_dim"] == 4 and saved["head_dim"] == 8
    saved["head_dim"] = saved.pop("ssm_head_dim")  # the earlier layout: head_dim was the SSM head width
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = H3ForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.ssm_head_dim, reloaded.config.head_dim) == (4, 8)
    ids = ids_and_mask(vocab=64)[0]
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-6, atol=1e-6)  # BLAS: alignment


# ---- 5. torch.export, compile, and value checks at the boundary ----

def test_torch_export_of_the_causal_lm_equals_eager_with_and_without_cache():
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_config()).eval()
    ids = ids_and_mask(vocab=64)[0]
    with torch.no_grad():
        eager = model(ids)
        exported = torch.export.export(model, (), {"input_ids": ids}).module()(input_ids=ids)
        torch.testing.assert_close(exported.logits, eager.logits, rtol=1e-6, atol=1e-6)
        for layer in (0, 2):  # SSM states of the returned cache
            torch.testing.assert_close(exported[CACHE_FIELD].layers[layer].recurrent_states[0],
                                       eager[CACHE_FIELD].layers[layer].recurrent_states[0], rtol=1e-6, atol=1e-6)
        no_cache = torch.export.export(model, (), {"input_ids": ids, "use_cache": False}).module()
        torch.testing.assert_close(no_cache(input_ids=ids, use_cache=False).logits, eager.logits, rtol=1e-6,
                                   atol=1e-6)


def test_exported_decode_step_equals_the_eager_step_logits_and_cache():
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_config()).eval()
    ids, token = ids_and_mask(vocab=64)[0], torch.tensor([[5], [7]])
    with torch.no_grad():
        prefilled = model(ids)[CACHE_FIELD]
        eager = model(input_ids=token, cache=copy.deepcopy(prefilled))
        program = torch.export.export(model, (), {"input_ids": token, "cache": copy.deepcopy(prefilled)}).module()
        exported = program(input_ids=token, cache=copy.deepcopy(prefilled))
    torch.testing.assert_close(exported.logits, eager.logits, rtol=1e-6, atol=1e-6)
    new, ref = exported[CACHE_FIELD], eager[CACHE_FIELD]
    assert new.seen_tokens == ref.seen_tokens == 11
    for layer in (0, 2):
        torch.testing.assert_close(new.layers[layer].recurrent_states[0], ref.layers[layer].recurrent_states[0])
        torch.testing.assert_close(new.layers[layer].conv_states[0], ref.layers[layer].conv_states[0])
    torch.testing.assert_close(new.layers[1].keys, ref.layers[1].keys)


@pytest.mark.parametrize("model_cls,config_fn", [(S4DForSequenceClassification, s4d_config),
                                                 (S5ForSequenceClassification, s5_config)])
def test_torch_export_of_the_classifiers_equals_eager(model_cls, config_fn):
    torch.manual_seed(0)
    model = model_cls(config_fn()).eval()
    ids, mask = ids_and_mask()
    kwargs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        exported = torch.export.export(model, (), kwargs).module()
        torch.testing.assert_close(exported(**kwargs).logits, model(**kwargs).logits, rtol=1e-6, atol=1e-6)


def test_compile_fullgraph_is_declared_exactly_where_it_works():
    ids, mask = ids_and_mask()
    s5 = S5ForSequenceClassification(s5_config()).eval()
    assert s5._can_compile_fullgraph
    compiled = torch.compile(s5.forward, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(input_ids=ids, attention_mask=mask).logits,
                               s5(input_ids=ids, attention_mask=mask).logits, rtol=1e-6, atol=1e-6)
    # the FFT convolution is kept out of compiled graphs (a graph break), so H3 and S4D compile with breaks only
    for model, kwargs in ((H3ForCausalLM(h3_config()), {"use_cache": False}),
                          (S4DForSequenceClassification(s4d_config()), {})):
        assert not model._can_compile_fullgraph
        torch._dynamo.reset()
        with pytest.raises(Exception, match="compiler.disable"):
            torch.compile(model.forward, fullgraph=True, backend="eager")(input_ids=ids, **kwargs)


def test_token_values_are_checked_at_generate_entry_and_prefill_not_per_decode_step(monkeypatch):
    model = H3ForCausalLM(h3_config()).eval()
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda x, *a, **k: calls.append(x.shape) or aminmax(x, *a, **k))
    ids = ids_and_mask(vocab=64, length=5)[0]
    model.generate(ids, max_new_tokens=8, do_sample=False)
    assert calls == [(2, 5), (2, 5)]  # generate() entry and the prefill forward, none of the 7 decode steps
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=64\)"):
        model.generate(torch.tensor([[1, 64]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=64\)"):
        model(torch.tensor([[1, 2, 70]]))


# ---- 6. a resized vocabulary reloads ----

def test_resized_vocabulary_not_a_multiple_of_the_padding_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = H3ForCausalLM(h3_config(vocab_size=64, pad_vocab_size_multiple=8)).eval()
    model.resize_token_embeddings(67)
    assert model.config.vocab_size == 67
    model.save_pretrained(tmp_path)
    reloaded = H3ForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.vocab_size == 67
    assert reloaded.get_input_embeddings().weight.shape == (67, 32) and reloaded.lm_head.weight.shape == (67, 32)
    ids = torch.randint(0, 67, (2, 9))
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-6, atol=1e-6)  # BLAS: alignment
    assert H3Config(vocab_size=50257).vocab_size == 50264  # a new config still pads as documented


# ---- 7. attention masks hold 0 and 1 only ----

@pytest.mark.parametrize("bad", [2, 0.5, -1])
def test_attention_mask_values_other_than_zero_and_one_are_rejected(bad):
    ids, mask = ids_and_mask(vocab=20)
    wrong = mask.to(torch.float32 if isinstance(bad, float) else torch.long)
    wrong[1, 4] = bad
    models = [H3ForCausalLM(h3_config()), S4DForSequenceClassification(s4d_config()),
              S5ForSequenceClassification(s5_config())]
    for model in models:
        with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1 \(token\)"):
            model(input_ids=ids, attention_mask=wrong)
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        models[0].generate(ids, attention_mask=wrong, max_new_tokens=2)


@pytest.mark.parametrize("model_cls,config_fn", [(H3ForCausalLM, h3_config), (S4DForSequenceClassification,
                                                 s4d_config), (S5ForSequenceClassification, s5_config)])
def test_bool_and_float_masks_of_zeros_and_ones_equal_the_integer_mask(model_cls, config_fn):
    torch.manual_seed(0)
    model = model_cls(config_fn()).eval()
    ids, mask = ids_and_mask()
    expected = model(input_ids=ids, attention_mask=mask).logits
    for other in (mask.bool(), mask.float()):
        torch.testing.assert_close(model(input_ids=ids, attention_mask=other).logits, expected, rtol=0, atol=0)

