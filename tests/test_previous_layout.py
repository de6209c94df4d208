"""Checkpoints saved by the package's earlier module layout (one ``ssm.py``, separate S4D and S5 backbones, one H3
mixer class for every mixer type) load with unchanged parameter names and compute what that code computed.

Each folder of ``tests/fixtures/previous-layout`` holds the weights and config that layout saved and, in
``reference.safetensors``, the inputs and the outputs that layout's code gave for them: logits, every hidden state
and (H3) a greedy generation. The weights were perturbed before saving so that every output depends on every
parameter, the SSM ones included.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import h3_hf  # noqa: F401  registers the Auto classes

FIXTURES = Path(__file__).parent / "fixtures" / "previous-layout"
FOLDERS = sorted(path.name for path in FIXTURES.iterdir())


def load(name: str):
    auto = AutoModelForCausalLM if name.startswith("h3") else AutoModelForSequenceClassification
    model, info = auto.from_pretrained(FIXTURES / name, output_loading_info=True)
    return model.eval(), info


def test_every_kind_of_saved_model_is_covered():
    assert FOLDERS == ["h3-hybrid", "h3-s4d-mixer", "s4d-bidirectional", "s5-timesteps"]


@pytest.mark.parametrize("name", FOLDERS)
def test_previous_checkpoint_loads_every_parameter_by_its_old_name(name):
    model, info = load(name)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    saved = load_file(FIXTURES / name / "model.safetensors")
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("name", FOLDERS)
def test_previous_checkpoint_computes_what_the_previous_code_computed(name):
    model, _ = load(name)
    reference = load_file(FIXTURES / name / "reference.safetensors")
    inputs = {key: reference[key] for key in ("input_ids", "inputs_embeds", "attention_mask", "timesteps")
              if key in reference}
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    # float32 rounding only: BLAS picks its kernels by CPU and by the weights' memory alignment, which differs
    # between the saving model and one that from_pretrained maps from the file
    torch.testing.assert_close(outputs.logits, reference["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack(outputs.hidden_states), reference["hidden_states"], rtol=1e-4, atol=1e-5)
    if "generated" in reference:
        generated = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8,
                                   do_sample=False, pad_token_id=0)
        assert torch.equal(generated, reference["generated"])
