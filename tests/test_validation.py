"""validation: every config field and every forward / generate input is checked before any work.

Each check raises a ValueError naming the field or argument and what is allowed.
"""

import functools
import re

import pytest
import torch
from tiny_models import h3_config, h3_hybrid_config, s4d_config, s5_config

from h3_hf import (
    H3Config,
    H3ForCausalLM,
    H3Model,
    S4DConfig,
    S4DForSequenceClassification,
    S4DModel,
    S5Config,
    S5ForSequenceClassification,
    S5Model,
)
from h3_hf.modeling_h3 import CACHE_FIELD

NAN, INF = float("nan"), float("inf")
small_s4d_config = functools.partial(s4d_config, hidden_size=8, num_hidden_layers=1, state_size=4)
small_s5_config = functools.partial(s5_config, hidden_size=8, num_hidden_layers=1)
FACTORIES = {H3Config: h3_config, S4DConfig: small_s4d_config, S5Config: small_s5_config}


def invalid(cls, field, value, allowed, **extra):
    """A case: ``cls(**base, **extra, field=value)`` raises "<cls>.<field>=<value> is invalid: <allowed...>"."""
    return pytest.param(cls, {**extra, field: value}, rf"^{cls.__name__}\.{field}={re.escape(repr(value))} is invalid: "
                        + re.escape(allowed), id=f"{cls.__name__}.{field}={value!r}")


def wrong_type(cls, field, value):
    """strict's type errors are ValueErrors too, naming the field and the value."""
    return pytest.param(cls, {field: value}, rf"^{cls.__name__}: Field '{field}' .*{re.escape(repr(value))}",
                        id=f"{cls.__name__}.{field}:{type(value).__name__}")


CONFIG_CASES = [
    # H3
    invalid(H3Config, "vocab_size", 0, "must be a positive integer"),
    invalid(H3Config, "vocab_size", -3, "must be a positive integer"),  # reported as given, not padded
    invalid(H3Config, "hidden_size", 0, "must be a positive integer"),
    invalid(H3Config, "num_hidden_layers", -1, "must be a positive integer"),
    invalid(H3Config, "state_size", 5, "must be a positive even integer"),
    invalid(H3Config, "state_size", 0, "must be a positive even integer"),
    invalid(H3Config, "ssm_head_dim", 0, "must be a positive integer"),
    invalid(H3Config, "ssm_head_dim", 3, "must divide hidden_size=16"),
    invalid(H3Config, "ssm_head_dim", 2, "must be 1 when mixer_type='s4d'", mixer_type="s4d"),
    invalid(H3Config, "attn_layer_idx", [2], "entries must be distinct layer indices in [0, num_hidden_layers=2)"),
    invalid(H3Config, "attn_layer_idx", [-1], "entries must be distinct layer indices"),
    invalid(H3Config, "attn_layer_idx", [1, 1], "entries must be distinct layer indices"),
    invalid(H3Config, "mixer_type", "mamba", "allowed values are ('h3', 'h3_shift_only', 'h3_diag_only', 's4d')"),
    invalid(H3Config, "ssm_init", "random", "allowed values are ('inv', 'lin', 'legs')"),
    invalid(H3Config, "num_attention_heads", 0, "must be a positive integer"),
    invalid(H3Config, "num_attention_heads", 3, "must divide hidden_size=16", attn_layer_idx=[0]),
    invalid(H3Config, "head_dim", 4, "must be hidden_size / num_attention_heads = 8", attn_layer_idx=[0],
            num_attention_heads=2),
    invalid(H3Config, "rotary_emb_dim", 3, "must be an even integer >= 0"),
    invalid(H3Config, "rotary_emb_dim", -2, "must be an even integer >= 0"),
    invalid(H3Config, "rotary_emb_dim", 10, "must be an even number in [0, attention head dim 8]", attn_layer_idx=[0]),
    invalid(H3Config, "rope_theta", 0.0, "must be a finite number > 0"),
    invalid(H3Config, "rope_theta", INF, "must be a finite number > 0"),
    invalid(H3Config, "intermediate_size", 0, "must be a positive integer"),
    invalid(H3Config, "discretization", "euler", "allowed values are ('zoh', 'bilinear')"),
    invalid(H3Config, "dt_min", 0.0, "must be a finite number > 0"),
    invalid(H3Config, "dt_min", NAN, "must be a finite number > 0"),
    invalid(H3Config, "dt_max", 1e-4, "must be a finite number >= dt_min=0.001"),
    invalid(H3Config, "dt_max", INF, "must be a finite number >= dt_min=0.001"),
    invalid(H3Config, "dt_max", 0.1, "must be a finite number >= dt_min=1.0", dt_min=1.0),  # dt_max's default
    invalid(H3Config, "layer_norm_epsilon", 0.0, "must be a finite number > 0"),
    invalid(H3Config, "embedding_dropout", 1.0, "must be a dropout probability in [0, 1)"),
    invalid(H3Config, "resid_dropout", -0.1, "must be a dropout probability in [0, 1)"),
    invalid(H3Config, "attention_dropout", NAN, "must be a dropout probability in [0, 1)"),
    invalid(H3Config, "initializer_range", -0.02, "must be a finite number >= 0"),
    invalid(H3Config, "pad_vocab_size_multiple", 0, "must be a positive integer"),
    invalid(H3Config, "kernel_chunk_size", 0, "must be None or a positive integer"),
    wrong_type(H3Config, "hidden_size", "16"),
    wrong_type(H3Config, "dt_min", 1),
    wrong_type(H3Config, "tie_word_embeddings", "yes"),
    wrong_type(H3Config, "attn_layer_idx", 1),
    # S4D
    pytest.param(S4DConfig, dict(vocab_size=10, input_size=3), r"^S4DConfig\.vocab_size/input_size=\(10, 3\) is "
                 r"invalid: set exactly one of vocab_size \(tokens\) or input_size", id="S4DConfig.vocab_and_input"),
    invalid(S4DConfig, "vocab_size", 0, "must be None or a positive integer"),
    invalid(S4DConfig, "input_size", -1, "must be None or a positive integer"),
    invalid(S4DConfig, "hidden_size", 0, "must be a positive integer"),
    invalid(S4DConfig, "num_hidden_layers", 0, "must be a positive integer"),
    invalid(S4DConfig, "state_size", 7, "must be a positive even integer"),
    invalid(S4DConfig, "state_size", 0, "must be a positive even integer"),
    invalid(S4DConfig, "state_size", -2, "must be a positive even integer"),
    invalid(S4DConfig, "init", "hippo", "allowed values are ('inv', 'lin', 'legs')"),
    invalid(S4DConfig, "discretization", "euler", "allowed values are ('zoh', 'bilinear')"),
    invalid(S4DConfig, "dt_min", -1e-3, "must be a finite number > 0"),
    invalid(S4DConfig, "dt_max", 1e-4, "must be a finite number >= dt_min=0.001"),
    invalid(S4DConfig, "dt_max", 0.1, "must be a finite number >= dt_min=0.5", dt_min=0.5),
    invalid(S4DConfig, "dropout", 1.5, "must be a dropout probability in [0, 1)"),
    invalid(S4DConfig, "pooling", "max", "allowed values are ('mean', 'last')"),
    invalid(S4DConfig, "layer_norm_eps", -1e-5, "must be a finite number > 0"),
    invalid(S4DConfig, "initializer_range", NAN, "must be a finite number >= 0"),
    invalid(S4DConfig, "kernel_chunk_size", -4, "must be None or a positive integer"),
    invalid(S4DConfig, "num_labels", 0, "must be a positive integer"),
    invalid(S4DConfig, "problem_type", "ranking", "allowed values are (None, 'regression'"),
    wrong_type(S4DConfig, "bidirectional", "yes"),
    wrong_type(S4DConfig, "state_size", 8.0),
    # S5
    pytest.param(S5Config, dict(vocab_size=5, input_size=2), r"^S5Config\.vocab_size/input_size=\(5, 2\) is invalid",
                 id="S5Config.vocab_and_input"),
    invalid(S5Config, "vocab_size", -5, "must be None or a positive integer"),
    invalid(S5Config, "hidden_size", 0, "must be a positive integer"),
    invalid(S5Config, "num_hidden_layers", 0, "must be a positive integer"),
    invalid(S5Config, "state_size", 0, "must be a positive integer"),
    invalid(S5Config, "blocks", 0, "must be a positive integer"),
    invalid(S5Config, "blocks", 3, "must divide state_size=8"),
    invalid(S5Config, "blocks", 4, "must divide state_size=10", state_size=10),
    invalid(S5Config, "conj_sym", True, "True needs an even block size state_size/blocks, got 3", state_size=6),
    invalid(S5Config, "discretization", "euler", "allowed values are ('zoh', 'bilinear')"),
    invalid(S5Config, "C_init", "zeros", "allowed values are ('trunc_standard_normal', 'lecun_normal'"),
    invalid(S5Config, "activation", "relu", "allowed values are ('half_glu1', 'half_glu2', 'full_glu', 'gelu')"),
    invalid(S5Config, "dt_min", INF, "must be a finite number > 0"),
    invalid(S5Config, "dt_max", NAN, "must be a finite number >= dt_min=0.001"),
    invalid(S5Config, "dt_max", 0.1, "must be a finite number >= dt_min=0.5", dt_min=0.5),
    invalid(S5Config, "step_rescale", 0.0, "must be a finite number > 0"),
    invalid(S5Config, "step_rescale", INF, "must be a finite number > 0"),
    invalid(S5Config, "dropout", -0.5, "must be a dropout probability in [0, 1)"),
    invalid(S5Config, "pooling", "max", "allowed values are ('mean', 'last')"),
    invalid(S5Config, "layer_norm_eps", 0.0, "must be a finite number > 0"),
    invalid(S5Config, "initializer_range", -1.0, "must be a finite number >= 0"),
    invalid(S5Config, "scan_chunk_size", 0, "must be None or a positive integer"),
    invalid(S5Config, "num_labels", 0, "must be a positive integer"),
    invalid(S5Config, "problem_type", "ranking", "allowed values are (None, 'regression'"),
    wrong_type(S5Config, "clip_eigs", 1),
    wrong_type(S5Config, "activation", None),
]


@pytest.mark.parametrize("cls,kwargs,match", CONFIG_CASES)
def test_invalid_config_field_raises_value_error_naming_it(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FACTORIES[cls](**kwargs)


@pytest.mark.parametrize("cls,kwargs", [(H3Config, dict(dt_min=0.01, dt_max=0.01)),
                                        (S5Config, dict(dt_min=0.01, dt_max=0.01)),
                                        (H3Config, dict(rotary_emb_dim=2, num_attention_heads=3))])
def test_boundary_configs_are_valid(cls, kwargs):
    """dt_min == dt_max (a fixed step) is allowed; without attention layers the heads need not divide the width."""
    FACTORIES[cls](**kwargs)


@pytest.mark.parametrize("model_class,field,value,match", [
    (H3ForCausalLM, "state_size", 5, r"^H3Config\.state_size=5 is invalid"),
    (S4DForSequenceClassification, "pooling", "max", r"^S4DConfig\.pooling='max' is invalid"),
    (S5Model, "blocks", 3, r"^S5Config\.blocks=3 is invalid"),
])
def test_building_a_model_revalidates_fields_changed_after_construction(model_class, field, value, match):
    config = FACTORIES[model_class.config_class]()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=match):
        model_class(config)


# ---- forward and generate inputs ----

def ids(*rows, dtype=torch.long):
    return torch.tensor(rows, dtype=dtype)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "h3": H3ForCausalLM(h3_hybrid_config()).eval(),
        "h3_base": H3Model(h3_config()).eval(),
        "s4d_tokens": S4DForSequenceClassification(small_s4d_config(vocab_size=11)).eval(),
        "s4d_real": S4DForSequenceClassification(small_s4d_config(input_size=2)).eval(),
        "s4d_base": S4DModel(small_s4d_config(input_size=2)).eval(),
        "s5_tokens": S5ForSequenceClassification(small_s5_config(vocab_size=11)).eval(),
        "s5_real": S5ForSequenceClassification(small_s5_config(input_size=2)).eval(),
        "s5_base": S5Model(small_s5_config(input_size=2)).eval(),
    }


x2 = torch.randn(2, 5, 2)
ts = torch.ones(2, 5)

INPUT_CASES = [
    # H3ForCausalLM / H3Model
    ("h3", dict(input_ids=ids([1, 40])), r"input_ids must lie in \[0, vocab_size=40\), got values in \[1, 40\]"),
    ("h3", dict(input_ids=ids([-1, 2])), r"input_ids must lie in \[0, vocab_size=40\)"),
    ("h3_base", dict(input_ids=ids([1, 99])), r"input_ids must lie in \[0, vocab_size=40\)"),
    ("h3", dict(input_ids=ids([1.0, 2.0], dtype=torch.float32)), "input_ids must be an int64 or int32 tensor"),
    ("h3", dict(input_ids=ids([1, 2], dtype=torch.int16)), "input_ids must be an int64 or int32 tensor"),
    ("h3", dict(input_ids=torch.tensor([1, 2])), r"input_ids must have shape \(batch, length\), got \(2,\)"),
    ("h3", dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
     r"inputs are empty: .*got \(batch, length\) = \(1, 0\)"),
    ("h3", dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), r"inputs are empty: .*= \(0, 3\)"),
    ("h3", dict(), "pass exactly one of input_ids or inputs_embeds"),
    ("h3", dict(input_ids=ids([1, 2]), inputs_embeds=torch.randn(1, 2, 16)), "pass exactly one of input_ids"),
    ("h3", dict(input_ids=ids([1, 2, 3]), attention_mask=torch.ones(1, 5)),
     r"attention_mask must have shape \(batch, past \+ length\) = \(1, 3\), got \(1, 5\)"),
    ("h3", dict(input_ids=ids([1, 2, 3]), attention_mask=torch.ones(2, 3)),
     r"attention_mask must have shape .*\(2, 3\)"),
    ("h3", dict(input_ids=ids([1, 2, 3]), position_ids=torch.arange(4)[None]),
     r"position_ids must have shape \(batch or 1, length\) = \(1, 3\), got \(1, 4\)"),
    ("h3", dict(inputs_embeds=torch.randn(1, 3, 16, dtype=torch.float64)),
     "inputs_embeds has dtype torch.float64 but the model's parameters are torch.float32"),
    ("h3", dict(inputs_embeds=torch.ones(1, 3, 16, dtype=torch.long)),
     "inputs_embeds must be a floating-point tensor, got torch.int64"),
    ("h3", dict(inputs_embeds=torch.randn(1, 3, 8)), r"inputs_embeds must have shape \(batch, length, 16\), got"),
    ("h3", dict(input_ids=ids([1, 2, 3]), labels=ids([1, 2])), r"labels must have the inputs' shape .*\(1, 3\)"),
    ("h3", dict(input_ids=ids([1, 2, 3]), labels=ids([1, 2, 40])), r"labels must lie in \[0, 40\) or be -100"),
    ("h3", dict(input_ids=ids([1, 2, 3]), labels=ids([1, 2, 3], dtype=torch.int32)),
     "labels must be an int64 .* tensor of class ids, got torch.int32"),
    # S4D / S5 classifiers and backbones
    ("s4d_tokens", dict(input_ids=ids([1, 11])), r"input_ids must lie in \[0, vocab_size=11\)"),
    ("s5_tokens", dict(input_ids=ids([-2, 1])), r"input_ids must lie in \[0, vocab_size=11\)"),
    ("s4d_tokens", dict(input_ids=ids([1, 2], dtype=torch.uint8)), "input_ids must be an int64 or int32 tensor"),
    ("s4d_tokens", dict(input_ids=ids([1, 2, 3]), attention_mask=torch.ones(1, 2)),
     r"attention_mask has shape \(1, 2\) but the inputs have shape \(1, 3\)"),
    ("s5_real", dict(inputs_embeds=x2, attention_mask=torch.ones(2, 4)), r"attention_mask has shape \(2, 4\)"),
    ("s4d_tokens", dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "inputs are empty"),
    ("s5_real", dict(inputs_embeds=torch.randn(2, 0, 2)), "inputs are empty"),
    ("s4d_real", dict(), "pass exactly one of input_ids or inputs_embeds"),
    ("s4d_real", dict(inputs_embeds=x2, input_values=x2), "pass inputs_embeds or input_values, not both"),
    ("s4d_real", dict(input_ids=ids([1, 2])), "input_ids given but this model takes real-valued inputs_embeds"),
    ("s4d_base", dict(inputs_embeds=torch.randn(1, 5, 3)), r"inputs_embeds must have shape \(batch, length, 2\)"),
    ("s4d_real", dict(inputs_embeds=x2.double()), "inputs_embeds has dtype torch.float64"),
    ("s5_real", dict(inputs_embeds=x2.double()), "inputs_embeds has dtype torch.float64"),
    ("s5_base", dict(input_values=x2.half()), "inputs_embeds has dtype torch.float16"),
    ("s4d_real", dict(inputs_embeds=x2, labels=ids(0, 3)), r"labels must lie in \[0, 3\) or be -100"),
    ("s5_real", dict(inputs_embeds=x2, labels=ids(0)), r"labels must have shape \(2,\) or \(2, 1\) for single_label"),
    ("s5_tokens", dict(input_ids=ids([1, 2]), labels=ids(1, dtype=torch.int32)), "labels must be an int64"),
    ("s5_real", dict(inputs_embeds=x2, timesteps=torch.zeros(2, 5)), r"timesteps must be finite and > 0"),
    ("s5_real", dict(inputs_embeds=x2, timesteps=-ts), r"timesteps must be finite and > 0"),
    ("s5_real", dict(inputs_embeds=x2, timesteps=ts * NAN), r"timesteps must be finite and > 0"),
    ("s5_base", dict(inputs_embeds=x2, timesteps=ts * INF), r"timesteps must be finite and > 0"),
    ("s5_real", dict(inputs_embeds=x2, timesteps=torch.ones(2, 4)), r"timesteps must have shape \(batch, length\)"),
    ("s5_real", dict(inputs_embeds=x2, timesteps=torch.ones(2, 5, dtype=torch.long)),
     "timesteps must be a floating-point tensor"),
]


@pytest.mark.parametrize("name,inputs,match", INPUT_CASES,
                         ids=[f"{n}-{'+'.join(k) or 'nothing'}-{i}" for i, (n, k, _) in enumerate(INPUT_CASES)])
def test_invalid_forward_input_raises_value_error_naming_it(models, name, inputs, match):
    with pytest.raises(ValueError, match=match):
        models[name](**inputs)


def test_neither_ids_nor_embeds_with_a_filled_cache_is_the_same_clear_error(models):
    model = models["h3"]
    with torch.no_grad():
        cache = getattr(model(input_ids=ids([1, 2, 3]), use_cache=True), CACHE_FIELD)
        with pytest.raises(ValueError, match="pass exactly one of input_ids or inputs_embeds"):
            model(past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("labels,problem_type,num_labels,match", [
    (torch.tensor([[0.0, 1.0, 0.0]]), None, 2, r"labels must have shape \(1, 2\) for multi_label"),
    (ids(1, 2), "multi_label_classification", 2, r"labels must have shape \(1, 2\) for multi_label"),
    (ids([1, 0]), "multi_label_classification", 2, "labels must be a floating-point tensor for multi_label"),
    (ids(3), None, 1, "labels must be a floating-point tensor for regression"),
])
def test_invalid_classification_labels_for_the_problem_type(labels, problem_type, num_labels, match):
    model = S4DForSequenceClassification(small_s4d_config(num_labels=num_labels, input_size=2,
                                                          problem_type=problem_type))
    with pytest.raises(ValueError, match=match):
        model(inputs_embeds=torch.randn(1, 5, 2), labels=labels)


@pytest.mark.parametrize("inputs,match", [
    (dict(inputs=ids([1, 40])), r"input_ids must lie in \[0, vocab_size=40\)"),
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "inputs are empty"),
    # transformers would drop an all-ones mask of any length without a word
    (dict(input_ids=ids([1, 2, 3]), attention_mask=torch.ones(1, 5, dtype=torch.long)),
     r"attention_mask must have shape .* got \(1, 5\)"),
    (dict(input_ids=ids([1, 2, 3]), attention_mask=torch.ones(2, 3, dtype=torch.long)),
     r"attention_mask must have shape .* got \(2, 3\)"),
    (dict(inputs_embeds=torch.randn(1, 3, 16, dtype=torch.float64)), "inputs_embeds has dtype torch.float64"),
])
def test_invalid_generate_input_raises_before_generating(models, inputs, match):
    with pytest.raises(ValueError, match=match):
        models["h3"].generate(**inputs, max_new_tokens=2, do_sample=False)


def test_valid_inputs_still_run(models):
    """The checks accept what they should: int32 ids, a mask over past + new tokens, -100 labels, timesteps."""
    lm = models["h3"]
    out = lm(input_ids=ids([1, 2, 3], dtype=torch.int32), labels=ids([1, -100, 3]), use_cache=True)
    assert torch.isfinite(out.loss)
    lm(input_ids=ids([4]), attention_mask=torch.ones(1, 4, dtype=torch.long), past_key_values=getattr(out, CACHE_FIELD))
    assert lm.generate(ids([1, 2]), attention_mask=ids([1, 1]), max_new_tokens=2, do_sample=False).shape == (1, 4)
    out = models["s5_real"](inputs_embeds=x2, timesteps=ts * 0.5, labels=ids(0, -100))
    assert torch.isfinite(out.loss)


def without_path(config):
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


@pytest.mark.parametrize("model_class", [H3ForCausalLM, S4DForSequenceClassification, S5ForSequenceClassification])
def test_tiny_model_round_trips_and_overrides_are_checked(model_class, tmp_path):
    """from_pretrained sets overrides on the loaded config after its construction; the model build checks them."""
    config = FACTORIES[model_class.config_class]()
    model_class(config).save_pretrained(tmp_path)
    assert without_path(model_class.from_pretrained(tmp_path).config) == without_path(config)
    field = "resid_dropout" if model_class is H3ForCausalLM else "dropout"
    with pytest.raises(ValueError, match=rf"^{type(config).__name__}\.{field}=2\.0 is invalid"):
        model_class.from_pretrained(tmp_path, **{field: 2.0})
