"""configuration_h3 / _s4d / _s5: defaults, derived fields and JSON round trips of the configs.

Derived fields: the padded vocabulary, layer types, the input kind (tokens or real values).
"""

import json

import pytest

from h3_hf import H3Config, S4DConfig, S5Config


@pytest.mark.parametrize("cls", [H3Config, S4DConfig, S5Config])
def test_default_config_constructs_and_round_trips(cls, tmp_path):
    config = cls()
    config.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    # a config.json with keys this version does not know (written by another version) still loads
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "some_future_field": 3, "torch_dtype": "float32"}))
    assert cls.from_pretrained(tmp_path).some_future_field == 3


def test_vocab_is_padded_and_layer_types():
    cfg = H3Config(vocab_size=50257, attn_layer_idx=[6])
    assert cfg.vocab_size == 50264
    assert cfg.layer_types[6] == "full_attention" and cfg.layer_types.count("linear_attention") == 11


def test_input_size_defaults_to_one_unless_the_inputs_are_tokens():
    """Setting both is an error (test_validation.py); setting vocab_size alone clears the default input_size."""
    assert S4DConfig().input_size == 1 and S4DConfig(vocab_size=5).input_size is None
