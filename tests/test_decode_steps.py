"""Decode steps call the blocks' ``step`` methods directly only while nothing observes a module call: hooks on a
block or its parts, global module hooks, training mode or per-layer outputs send a step through the modules, and
both ways produce the tokens of an uncached run."""

import pytest
import torch
from tiny_models import build, h3_config, h3_hybrid_config
from torch import nn

from h3_hf import H3ForCausalLM
from h3_hf.modeling_h3 import H3Block


def generate(model, ids, new_tokens=5, **kwargs):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)


def uncached_greedy(model, ids, new_tokens=5):
    """The reference: every token from a full forward pass over the whole sequence, no cache."""
    with torch.no_grad():
        for _ in range(new_tokens):
            next_token = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
    return ids


@pytest.fixture
def block_step_calls(monkeypatch):
    calls = []
    step = H3Block.step

    def counted(self, *args, **kwargs):
        calls.append(self)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(H3Block, "step", counted)
    return calls


@pytest.mark.parametrize("config", [h3_config, h3_hybrid_config], ids=["pure", "hybrid"])
def test_unobserved_decode_steps_run_the_blocks_directly_and_match_an_uncached_run(config, block_step_calls):
    model = build(H3ForCausalLM, config(ssm_head_dim=2))
    ids = torch.randint(1, 40, (2, 7))
    assert torch.equal(generate(model, ids), uncached_greedy(model, ids))
    assert len(block_step_calls) == 4 * len(model.backbone.layers)  # every step after the prefill's token


@pytest.mark.parametrize("part", ["block", "norm1", "mixer", "norm2", "mlp", "dropout", "attention"])
def test_a_forward_hook_on_any_part_a_step_skips_sees_every_decode_step(part, block_step_calls):
    model = build(H3ForCausalLM, h3_hybrid_config())
    block = model.backbone.layers[1 if part == "attention" else 0]
    module = block.mixer if part == "attention" else block if part == "block" else getattr(block, part)
    ids = torch.randint(1, 40, (2, 7))
    expected = uncached_greedy(model, ids)
    seen = []
    module.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    assert torch.equal(generate(model, ids), expected)
    calls_per_forward = 2 if part == "dropout" else 1  # a block applies its dropout twice
    assert seen == [n for n in (7, 1, 1, 1, 1) for _ in range(calls_per_forward)]  # the prefill, then each step
    assert not block_step_calls


def test_a_global_module_hook_and_a_replaced_forward_route_steps_through_the_modules(block_step_calls):
    model = build(H3ForCausalLM, h3_config())
    ids = torch.randint(1, 40, (1, 6))
    expected = uncached_greedy(model, ids)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(type(mod).__name__) if isinstance(mod, H3Block) else None)
    try:
        assert torch.equal(generate(model, ids), expected)
    finally:
        handle.remove()
    assert seen.count("H3Block") == 5 * len(model.backbone.layers) and not block_step_calls
    mlp = model.backbone.layers[1].mlp
    wrapped = []
    original = mlp.forward
    mlp.forward = lambda *args, **kwargs: wrapped.append(1) or original(*args, **kwargs)  # as accelerate's hooks do
    assert torch.equal(generate(model, ids), expected)
    assert len(wrapped) == 5 and not block_step_calls


def test_training_mode_and_per_layer_outputs_decode_through_the_modules(block_step_calls):
    model = build(H3ForCausalLM, h3_config())
    ids = torch.randint(1, 40, (1, 6))
    expected = uncached_greedy(model, ids)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).cache
        step = model(input_ids=expected[:, 6:7], cache=cache, use_cache=True, output_hidden_states=True)
    assert len(step.hidden_states) == len(model.backbone.layers) + 1 and not block_step_calls
    model.train()  # no dropout in this config: the same tokens, through the modules
    assert torch.equal(generate(model, ids), expected) and not block_step_calls


def test_a_dropout_switched_on_in_an_eval_block_is_applied_through_the_modules(block_step_calls):
    """Monte Carlo dropout: the model in eval mode, one block's dropout in training mode."""
    model = build(H3ForCausalLM, h3_config(resid_dropout=0.5))
    model.backbone.layers[0].dropout.train()
    ids = torch.randint(1, 40, (1, 6))
    dropped = []
    model.backbone.layers[0].dropout.register_forward_hook(lambda mod, args, out: dropped.append(
        bool((out == 0).any() and not (args[0] == 0).any())))
    generate(model, ids)
    assert not model.backbone.layers[0].can_step() and not block_step_calls
    assert len(dropped) == 10 and all(dropped)  # 2 per forward, each zeroing some values


@pytest.mark.parametrize("layer", ["q_proj", "output_linear", "fc1", "fc2"])
def test_hooked_linear_layers_see_a_sequence_of_one_token_in_decode_steps(layer):
    """A layer run as a module in a step gets (batch, 1, features), as in a forward pass, not (batch, features)."""
    model = build(H3ForCausalLM, h3_config())
    block = model.backbone.layers[1]
    module = block.mlp if layer.startswith("fc") else block.mixer
    ids = torch.randint(1, 40, (2, 6))
    expected = uncached_greedy(model, ids, new_tokens=3)
    shapes = []
    getattr(module, layer).register_forward_hook(lambda mod, args, out: shapes.append((args[0].dim(), out.shape[:2])))
    assert torch.equal(generate(model, ids, new_tokens=3), expected)
    assert shapes == [(3, (2, 6)), (3, (2, 1)), (3, (2, 1))]
