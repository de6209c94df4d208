"""A trained H3 (tests/fixtures/h3-associative-recall) in half precision and at 64k tokens of context.

Half-precision generation gives float32's greedy tokens, and the model evaluates and decodes after 64k tokens of
context with a cache of constant size.
"""

import os
import sys

import pytest
import torch

from h3_hf import H3ForCausalLM
from h3_hf.modeling_h3 import CACHE_FIELD

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from bench_common import trained_synthetic_run  # noqa: E402
from bench_generation import cache_tensors  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "h3-associative-recall")


@pytest.fixture(scope="module")
def test_examples() -> torch.Tensor:
    """The run's test split, regenerated: (500, seq_len + 1) prompts followed by their answers."""
    _, data = trained_synthetic_run(FIXTURE)
    return torch.tensor(data["test"]["input_ids"])


def greedy(model, prompts: torch.Tensor, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """6 greedy tokens after each prompt (n, 6) and, per step, the margin of the chosen token's logit over the
    runner-up (n, 6)."""
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=6,
                             do_sample=False, eos_token_id=None, output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores, dim=1).float().topk(2, dim=-1).values
    return out.sequences[:, prompts.shape[1]:], top2[..., 0] - top2[..., 1]


NEAR_TIE = 0.05  # logit margin; the steps where bf16 chose differently all had float32 margins below 0.02


def test_bf16_and_fp16_greedy_generation_match_float32(test_examples):
    """Half precision decides as float32 wherever float32's decision is not a near tie: every answer (the model is
    sure of them), and each continuation up to its first near tie. After the answer the model predicts the next
    random key, close to uniform over the four keys, so later steps are often near ties where paths may part."""
    prompts, answers = test_examples[:, :-1], test_examples[:, -1]
    reference, margins = greedy(H3ForCausalLM.from_pretrained(FIXTURE), prompts)
    assert (reference[:, 0] == answers).float().mean() >= 0.97  # the fixture really is trained
    assert (margins[:, 0] > NEAR_TIE).all()
    near = margins < NEAR_TIE
    first_tie = torch.where(near.any(1), near.int().argmax(1), near.shape[1])  # (n,)
    decided = torch.arange(near.shape[1])[None] < first_tie[:, None]  # (n, 6): steps before the first near tie
    assert decided[:, 1:].sum() >= 0.2 * len(prompts)  # later steps are compared too
    for dtype in (torch.bfloat16, torch.float16):
        weights, _ = greedy(H3ForCausalLM.from_pretrained(FIXTURE, dtype=dtype), prompts)
        autocast, _ = greedy(H3ForCausalLM.from_pretrained(FIXTURE), prompts, autocast=dtype)
        for name, tokens in (("weights", weights), ("autocast", autocast)):
            assert torch.equal(tokens[decided], reference[decided]), f"{dtype} {name}"


def cache_bytes(cache) -> int:
    return sum(t.nbytes for t in cache_tensors(cache))


@torch.no_grad()
def test_evaluates_and_decodes_after_64k_tokens_with_a_constant_cache(test_examples):
    """65,536 tokens of complete examples as the distant past, then a prompt: the logits stay finite, the cache
    keeps its size through 32 decode steps, and the prefilled cache decodes like the model run on the whole
    sequence (recurrence = convolution at 64k positions)."""
    torch.manual_seed(0)
    model = H3ForCausalLM.from_pretrained(FIXTURE).eval()
    past = test_examples[torch.randint(1, len(test_examples), (65536 // test_examples.shape[1] + 1,))].flatten()
    ids = torch.cat([past[-(65536 - 20):], test_examples[0, :-1]])[None]
    out = model(input_ids=ids, use_cache=True)
    assert torch.isfinite(out.logits).all()
    cache, size = getattr(out, CACHE_FIELD), cache_bytes(getattr(out, CACHE_FIELD))
    assert 0 < size < 2**20
    tokens = [out.logits[:, -1:].argmax(-1)]
    for _ in range(32):
        step = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True)
        assert torch.isfinite(step.logits).all() and cache_bytes(getattr(step, CACHE_FIELD)) == size
        cache = getattr(step, CACHE_FIELD)
        tokens.append(step.logits[:, -1:].argmax(-1))
    full = model(input_ids=torch.cat([ids, *tokens[:-1]], dim=1)).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-4)
