"""Projections replaced by other modules (a low-rank adapter, peft's LoRA) or given a forward hook: training
forward, cached decoding and generate() all run them, and match the plain model whose weights hold the same change.

The mixers read a plain ``nn.Linear``'s weight directly (fused and transposed products); anything else must be run
as a module, or its change is silently lost.
"""

import copy

import pytest
import torch
from tiny_models import build, h3_config
from torch import nn

from h3_hf import H3ForCausalLM
from h3_hf.modeling_h3 import CACHE_FIELD


class LowRankAdapted(nn.Module):
    """base(x) + x @ A^T @ B^T: a LoRA-like wrapper (not an nn.Linear) exposing the base layer's weight and bias."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.3)
        self.B = nn.Parameter(torch.randn(base.out_features, rank) * 0.3)

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def forward(self, x):
        return self.base(x) + x @ self.A.t() @ self.B.t()

    def merged(self) -> nn.Linear:
        """The plain layer computing the same function (the reference)."""
        plain = copy.deepcopy(self.base)
        with torch.no_grad():
            plain.weight += self.B @ self.A
        return plain


def targets(model: H3ForCausalLM, name: str) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every module called ``name`` (lm_head: the model's head)."""
    if name == "lm_head":
        return [(model, "lm_head")]
    return [(parent, name) for parent in model.modules() if isinstance(getattr(parent, name, None), nn.Linear)]


def adapted_and_merged(mixer_type: str, name: str) -> tuple[H3ForCausalLM, H3ForCausalLM]:
    model = build(H3ForCausalLM, h3_config(mixer_type=mixer_type, tie_word_embeddings=False))
    reference = copy.deepcopy(model)
    torch.manual_seed(1)
    for (parent, attr), (ref_parent, _) in zip(targets(model, name), targets(reference, name)):
        wrapper = LowRankAdapted(getattr(parent, attr))
        setattr(parent, attr, wrapper)
        setattr(ref_parent, attr, wrapper.merged())
    return model.eval(), reference.eval()


def cached_logits(model, ids, new_tokens: int) -> torch.Tensor:
    """Logits of the last ``new_tokens`` positions, each computed by a one-token step through the cache."""
    out = model(input_ids=ids[:, :-new_tokens], use_cache=True)
    cache, logits = getattr(out, CACHE_FIELD), []
    for t in range(ids.shape[1] - new_tokens, ids.shape[1]):
        logits.append(model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1])
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("mixer_type,name", [("h3", "q_proj"), ("h3", "k_proj"), ("h3", "v_proj"),
                                             ("h3", "output_linear"), ("h3", "fc1"), ("h3", "lm_head"),
                                             ("s4d", "output_linear")])
def test_an_adapted_projection_counts_in_training_forward_decoding_and_generate(mixer_type, name):
    model, reference = adapted_and_merged(mixer_type, name)
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert (expected - build(H3ForCausalLM, reference.config)(input_ids=ids).logits).abs().max() > 1e-3
        torch.testing.assert_close(cached_logits(model, ids, 4), expected[:, -4:], rtol=1e-4, atol=1e-5)
        prompt = ids[:, :6]
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
        assert torch.equal(generated, reference.generate(prompt, attention_mask=torch.ones_like(prompt),
                                                         max_new_tokens=5, do_sample=False))


def test_a_forward_hook_on_a_projection_is_run_when_decoding():
    model = build(H3ForCausalLM, h3_config())
    reference = copy.deepcopy(model)
    model.backbone.layers[0].mixer.q_proj.register_forward_hook(lambda module, args, out: 2.0 * out)
    with torch.no_grad():
        reference.backbone.layers[0].mixer.q_proj.weight.mul_(2.0)  # the same change, in the weights
        reference.backbone.layers[0].mixer.q_proj.bias.mul_(2.0)
        ids = torch.randint(0, 40, (2, 12))
        expected = reference(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached_logits(model, ids, 4), expected[:, -4:], rtol=1e-4, atol=1e-5)


def test_peft_lora_on_every_projection_trains_and_generates_like_the_merged_model():
    """peft's own LoRA (random B, so the adapters change the function): its forward, cached decoding and generate()
    against the model with the adapters merged into plain weights."""
    peft = pytest.importorskip("peft")
    model = build(H3ForCausalLM, h3_config(tie_word_embeddings=False))
    config = peft.LoraConfig(r=4, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "output_linear", "fc1", "fc2", "lm_head"])
    adapted = peft.get_peft_model(model, config).eval()
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        logits = adapted(input_ids=ids).logits
        decoded = cached_logits(adapted, ids, 4)
        prompt = ids[:, :6]
        generated = adapted.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                                     do_sample=False)
        merged = adapted.merge_and_unload().eval()
        expected = merged(input_ids=ids).logits
        assert torch.equal(generated, merged.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                                      max_new_tokens=5, do_sample=False))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, expected[:, -4:], rtol=1e-4, atol=1e-5)
