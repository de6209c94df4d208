"""modeling_h3: the H3 mixers and language model against an explicit float64 recurrence.

Also the cache handover between convolution and recurrent mode, decode parameters kept in the cache, gradient
checkpointing, attention implementations and torch.compile.
"""

import copy
import functools

import pytest
import torch
from references import naive_h3_logits, randomize_ssm, token_weight_matrix
from tiny_models import build, h3_config

from h3_hf import H3ForCausalLM
from h3_hf.modeling_h3 import CACHE_FIELD, ShiftSSMKernel

lm_config = functools.partial(h3_config, num_hidden_layers=3, dt_min=0.01, dt_max=0.5)


@pytest.mark.parametrize("head_dim", [1, 2])
@pytest.mark.parametrize("attn", [[], [1]])
@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
def test_convolution_mode_equals_explicit_float64_recurrence(head_dim, attn, disc):
    torch.manual_seed(0)
    config = lm_config(ssm_head_dim=head_dim, attn_layer_idx=attn, rotary_emb_dim=4 if attn else 0,
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
    config = lm_config(ssm_head_dim=head_dim, attn_layer_idx=attn, mixer_type=mixer,
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
    model = H3ForCausalLM(lm_config(ssm_head_dim=head_dim, attn_layer_idx=attn, mixer_type=mixer)).eval()
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
    model = H3ForCausalLM(lm_config(attn_layer_idx=[1])).eval()
    cache = getattr(model(torch.randint(0, 40, (2, 30)), use_cache=True), CACHE_FIELD)
    shapes_before = [tuple(cache.layers[i].conv_states[0].shape) for i in (0, 2)]
    for _ in range(5):
        cache = getattr(model(torch.randint(0, 40, (2, 1)), past_key_values=cache, use_cache=True), CACHE_FIELD)
    assert [tuple(cache.layers[i].conv_states[0].shape) for i in (0, 2)] == shapes_before == [(2, 16, 8)] * 2
    assert tuple(cache.layers[0].recurrent_states[0].shape) == (2, 1, 1, 16, 4)
    assert cache.layers[1].keys.shape[-2] == 35  # the attention layer's KV cache grows


def test_logits_to_keep_and_loss():
    torch.manual_seed(0)
    model = H3ForCausalLM(lm_config()).eval()
    ids = torch.randint(0, 40, (2, 10))
    full = model(ids, labels=ids)
    last = model(ids, logits_to_keep=1)
    torch.testing.assert_close(last.logits, full.logits[:, -1:])
    ref = torch.nn.functional.cross_entropy(full.logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(full.loss, ref)


def test_tied_embeddings_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = H3ForCausalLM(lm_config(attn_layer_idx=[1]))
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


def test_eager_and_sdpa_attention_agree():
    torch.manual_seed(0)
    model = H3ForCausalLM(lm_config(attn_layer_idx=[0, 2], rotary_emb_dim=4)).eval()
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
    model = H3ForCausalLM(lm_config()).eval()
    ids = torch.randint(0, 40, (2, 10))
    out = model(ids, labels=ids, num_items_in_batch=torch.tensor(36))
    summed = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1),
                                               reduction="sum")
    torch.testing.assert_close(out.loss, summed / 36)


def test_shift_kernel_passes_gradcheck_in_its_parameters():
    torch.manual_seed(0)
    shift = ShiftSSMKernel(3, 5).double()
    names = [n for n, _ in shift.named_parameters()]
    assert torch.autograd.gradcheck(lambda *v: torch.func.functional_call(shift, dict(zip(names, v)), ()),
                                    tuple(shift.parameters()))


# ---- decode parameters kept in the cache: recomputed when the weights change, never used while training ----

def fresh_copy(model: H3ForCausalLM) -> H3ForCausalLM:
    """An independently built model with the same weights (nothing memoised)."""
    copy = H3ForCausalLM(model.config).to(model.dtype).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def decode_logits(model, ids, new_tokens):
    """Logits of each forced next token through the cache (batch, new, vocab)."""
    out = model(input_ids=ids[:, :-new_tokens], use_cache=True)
    cache, logits = getattr(out, CACHE_FIELD), []
    for t in range(ids.shape[1] - new_tokens, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


def change_weights(model, change: str, ids):
    if change == "in_place":
        with torch.no_grad():
            for mixer in (block.mixer for block in model.backbone.layers):
                mixer.kernel.log_dt.add_(0.5)
                mixer.shift_kernel.B.mul_(-1.0)
                mixer.q_proj.weight.mul_(2.0)
    elif change == "optimizer_step":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    elif change == "load_state_dict":
        model.load_state_dict({k: v * 1.5 if "kernel" in k else v for k, v in model.state_dict().items()})
    elif change == "replace_submodule":
        torch.manual_seed(1)
        model.backbone.layers[0].mixer.q_proj = torch.nn.Linear(16, 16)
    else:  # a dtype change moves every weight
        model.double()


CHANGES = ["in_place", "optimizer_step", "load_state_dict", "replace_submodule", "to_float64"]


@pytest.mark.parametrize("change", CHANGES)
def test_forward_and_decode_use_the_current_weights_after_they_change(change):
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        decode_logits(model, ids, 4)
        model(input_ids=ids)
    change_weights(model, change, ids)
    reference = fresh_copy(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(decode_logits(model, ids, 4), reference(input_ids=ids).logits[:, -4:],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("change", CHANGES)
def test_step_parameters_stored_in_the_cache_follow_weight_changes_between_steps(change):
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        cache = getattr(model(input_ids=ids[:, :-1], use_cache=True), CACHE_FIELD)
        model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)
        mixer = model.backbone.layers[0].mixer
        dtype = mixer.output_linear.weight.dtype
        first = mixer._decode_parameters(cache, dtype)
        assert mixer._decode_parameters(cache, dtype) is first  # derived once per generation
    change_weights(model, change, ids)
    with torch.no_grad():
        mixer = model.backbone.layers[0].mixer
        dtype = mixer.output_linear.weight.dtype
        stored = mixer._decode_parameters(cache, dtype)
        fresh = fresh_copy(model).backbone.layers[0].mixer._step_parameters(dtype)
    assert stored.keys() == fresh.keys()
    for name in fresh:
        torch.testing.assert_close(stored[name], fresh[name], rtol=0, atol=0, msg=name)


def test_decode_logits_use_a_transposed_head_kept_with_the_cache_and_follow_changes_of_the_head():
    """A decode step's logits come from the LM head transposed once per cache; an in-place change of the (tied)
    head between two steps is seen by the next step, which then equals an independently built model's step."""
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        cache = getattr(model(input_ids=ids[:, :-2], use_cache=True), CACHE_FIELD)
        first = model(input_ids=ids[:, -2:-1], past_key_values=cache, use_cache=True).logits
        stored = cache.step_parameters["lm_head"][1]["weight"]
        torch.testing.assert_close(token_weight_matrix(stored), model.lm_head.weight, rtol=0, atol=0)
        torch.testing.assert_close(first[:, -1], model(input_ids=ids[:, :-1]).logits[:, -1], rtol=1e-4, atol=1e-5)
        model.lm_head.weight.mul_(-2.0)  # tied: the embedding changes too
        untouched = copy.deepcopy(cache)
        second = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).logits
    assert cache.step_parameters["lm_head"][1]["weight"] is not stored
    with torch.enable_grad():  # with autograd on nothing is kept: the head is applied as nn.Linear
        reference = fresh_copy(model)(input_ids=ids[:, -1:], past_key_values=untouched, use_cache=True).logits
    torch.testing.assert_close(second, reference.detach(), rtol=1e-5, atol=1e-6)


def test_generation_in_inference_mode_leaves_the_model_usable_with_autograd():
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (1, 6))
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=3, do_sample=False)
    model.requires_grad_(False)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    model(inputs_embeds=embeds).logits.square().sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_decode_with_autograd_on_builds_a_graph_to_the_ssm_weights():
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        cache = getattr(model(input_ids=ids[:, :-1], use_cache=True), CACHE_FIELD)
        model(input_ids=ids[:, -2:-1], past_key_values=cache, use_cache=True)  # fills the cache's store
    mixer = model.backbone.layers[0].mixer
    step = mixer._decode_parameters(cache, torch.float32)
    step["da"].abs().sum().backward()
    assert mixer.kernel.log_dt.grad is not None and mixer.kernel.log_dt.grad.abs().sum() > 0


def test_torch_compile_training_forward_and_backward_match_eager():
    """float64 so that a wrong gradient cannot hide in rounding. The loss is computed here in float64 (transformers'
    own LM loss casts the logits to float32)."""
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2)).double()
    ids = torch.randint(0, 40, (2, 24))

    def loss_of(forward):
        logits = forward(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    eager = loss_of(model)
    eager.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = loss_of(torch.compile(model))
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-8, atol=0)
    for name, param in model.named_parameters():
        scale = eager_grads[name].abs().max().item()
        assert (param.grad - eager_grads[name]).abs().max().item() <= 1e-6 * scale, name


def test_torch_compile_decode_steps_match_eager_greedy_generation():
    model = build(H3ForCausalLM, h3_config(ssm_head_dim=2))
    ids = torch.randint(0, 40, (2, 10))
    step = torch.compile(model.forward)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
        out = model(input_ids=ids, use_cache=True)
        cache, token, tokens = getattr(out, CACHE_FIELD), out.logits[:, -1:].argmax(-1), []
        for _ in range(6):
            tokens.append(token)
            out = step(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = getattr(out, CACHE_FIELD), out.logits[:, -1:].argmax(-1)
    assert torch.equal(torch.cat(tokens, dim=1), expected)
