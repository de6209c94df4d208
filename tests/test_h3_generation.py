"""H3 generation: every decoding strategy of generate() with the cache equals the uncached reference."""

import pytest
import torch
from tiny_models import h3_config
from transformers import TextStreamer, pipeline

from h3_hf import H3Cache, H3ForCausalLM
from h3_hf.data.tokenization import build_word_level_tokenizer
from h3_hf.modeling_h3 import CACHE_FIELD

CHARS = list("abcdefghijklmnopqrstuvwxyz .,")


def make_model(attn=(), head_dim=1, rotary=0, seed=0, mixer="h3"):
    torch.manual_seed(seed)
    tok = build_word_level_tokenizer(CHARS, split_chars=True)
    config = h3_config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, ssm_head_dim=head_dim,
                       attn_layer_idx=list(attn), num_attention_heads=4, rotary_emb_dim=rotary, mixer_type=mixer,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       dt_min=0.01, dt_max=0.5)
    model = H3ForCausalLM(config).eval()
    with torch.no_grad():  # sharper random weights: decisions are not near ties and depend on the state
        model.backbone.embeddings.weight.normal_(0, 1.0)
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "Wqkv.weight")):
                param.normal_(0, 0.5)
            elif name.endswith(("output_linear.weight", "out_proj.weight")):
                param.normal_(0, 0.5)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: let every sequence run to max_new_tokens
    return model, tok


CONFIGS = {"pure": dict(), "hybrid": dict(attn=(1,), rotary=4), "head_dim2": dict(head_dim=2, attn=(2,))}


def generate_both(model, **kw):
    cached = model.generate(**kw, use_cache=True)
    uncached = model.generate(**kw, use_cache=False)
    return cached, uncached


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_cached_equals_uncached_and_manual_loop(name):
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (2, 7))
    cached, uncached = generate_both(model, input_ids=ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(cached, uncached)
    seq = ids
    for _ in range(12):  # re-run the whole sequence each step, no cache at all
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize("name", CONFIGS)
def test_beam_search_cached_equals_uncached(name):
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (2, 6))
    kw = dict(input_ids=ids, max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False,
              output_scores=True, return_dict_in_generate=True)
    cached, uncached = generate_both(model, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mixer", ["s4d", "h3_shift_only", "h3_diag_only"])
def test_ablation_mixers_generate_like_the_uncached_loop(mixer):
    """Mixers with only one of the two SSMs keep only the state they need and still decode exactly."""
    model, _ = make_model(attn=(1,), rotary=4, mixer=mixer)
    ids = torch.randint(0, 29, (2, 6))
    greedy = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    seq = ids
    for _ in range(8):
        seq = torch.cat([seq, model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq)
    kw = dict(input_ids=ids, max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False)
    cached, uncached = generate_both(model, **kw)
    assert torch.equal(cached, uncached)


def test_beam_search_needs_cache_reordering():
    """Negative control: with reordering disabled the cached beams diverge, so the test above has teeth."""
    model, _ = make_model()
    ids = torch.randint(0, 29, (2, 6))
    kw = dict(input_ids=ids, max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False)
    reference = model.generate(**kw, use_cache=False)
    original = H3Cache.reorder_cache
    H3Cache.reorder_cache = lambda self, beam_idx: None
    try:
        broken = model.generate(**kw)
    finally:
        H3Cache.reorder_cache = original
    assert not torch.equal(broken, reference)


@pytest.mark.parametrize("name", CONFIGS)
def test_sampling_with_seed_and_beam_sampling(name):
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (2, 5))
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        outs.append(model.generate(input_ids=ids, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=10,
                                   top_p=0.9, repetition_penalty=1.3, use_cache=use_cache))
    assert torch.equal(*outs)
    for use_cache in (True, False):
        torch.manual_seed(7)
        outs.append(model.generate(input_ids=ids, max_new_tokens=6, do_sample=True, num_beams=2,
                                   use_cache=use_cache))
    assert torch.equal(outs[2], outs[3])


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padded_batch_equals_each_prompt_alone(name):
    model, tok = make_model(**CONFIGS[name])
    prompts = ["hello wor", "ab", "the quick brown"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # left padding really happened
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        alone = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
        n = len(tok(prompt)["input_ids"])
        assert out[i, width:].tolist() == alone[0, n:].tolist(), prompt


def test_left_padding_needs_masking_of_the_ssm_inputs(monkeypatch):
    """Negative control: if padding reached the SSM state, the padded batch would differ."""
    import h3_hf.modeling_h3 as mod

    model, tok = make_model()
    prompts = ["hello wor", "ab"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    good = model.generate(**batch, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        model.backbone.embeddings.weight[tok.pad_token_id] += 3.0
    monkeypatch.setattr(mod, "mask_padding", lambda x, mask: x)
    bad = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert not torch.equal(good[1], bad[1])


@pytest.mark.parametrize("name", CONFIGS)
def test_continuing_from_returned_cache_equals_one_long_generation(name):
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (1, 6))
    long = model.generate(input_ids=ids, max_new_tokens=14, do_sample=False)
    first = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    # explicit mask: a random model may emit the pad id, which generate() would otherwise read as padding
    second = model.generate(input_ids=first.sequences, attention_mask=torch.ones_like(first.sequences),
                            **{CACHE_FIELD: getattr(first, CACHE_FIELD)}, max_new_tokens=8, do_sample=False)
    assert torch.equal(second, long)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_chunking_and_inputs_embeds(name):
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (2, 11))
    ref = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    chunked = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, prefill_chunk_size=4)
    assert torch.equal(chunked, ref)
    embeds = model.get_input_embeddings()(ids)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False)
    assert torch.equal(from_embeds, ref[:, 11:])


def test_decode_steps_feed_one_token():
    model, _ = make_model(attn=(1,))
    lengths = []
    hook = model.backbone.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    model.generate(input_ids=torch.randint(0, 29, (1, 7)), max_new_tokens=5, do_sample=False)
    hook.remove()
    assert lengths == [7, 1, 1, 1, 1]


def test_assisted_decoding_is_rejected():
    model, _ = make_model()
    assistant, _ = make_model(seed=1)
    with pytest.raises(ValueError, match="stateful"):
        model.generate(input_ids=torch.randint(0, 29, (1, 5)), assistant_model=assistant, max_new_tokens=3)


def test_streamer_and_text_generation_pipeline(capsys):
    model, tok = make_model(attn=(1,))
    inputs = tok("hello", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, streamer=TextStreamer(tok))
    printed = capsys.readouterr().out
    assert tok.decode(out[0]) in printed.replace("\n", "")
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    result = gen(["hello", "abc de"], max_new_tokens=6, do_sample=False, batch_size=2, return_full_text=False)
    for prompt, res in zip(["hello", "abc de"], result):
        alone = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        expected = tok.decode(alone[0, len(tok(prompt)["input_ids"]):], skip_special_tokens=True)
        assert res[0]["generated_text"] == expected


@pytest.mark.parametrize("name", ["pure", "hybrid"])
def test_continuing_with_only_the_new_tokens_and_the_full_mask(name):
    """generate(new tokens, attention_mask over past + new, cache) = one long generation (the input checks of
    generate() count the cached tokens)."""
    model, _ = make_model(**CONFIGS[name])
    ids = torch.randint(0, 29, (1, 6))
    long = model.generate(input_ids=ids, max_new_tokens=14, do_sample=False)
    first = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    cache, seen = getattr(first, CACHE_FIELD), getattr(first, CACHE_FIELD).get_seq_length()
    second = model.generate(input_ids=first.sequences[:, seen:], attention_mask=torch.ones_like(first.sequences),
                            **{CACHE_FIELD: cache}, max_new_tokens=8, do_sample=False)
    assert torch.equal(second[:, -8:], long[:, -8:])
