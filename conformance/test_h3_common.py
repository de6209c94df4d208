"""transformers' common model, generation and config tests on H3ForCausalLM / H3Model.

Two setups, as transformers tests Mamba and its attention hybrids (Bamba, Jamba, LFM2, FalconH1):
an H3/attention hybrid (``attn_layer_idx=[1]``) and a pure-SSM H3 whose diagonal SSM has heads of width 2.
Run through ``conformance/run.py``, which makes transformers' ``tests/`` importable as the package ``tests``.
"""

import unittest

import torch
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, ids_tensor
from transformers.testing_utils import require_torch, torch_device

from h3_hf import H3Config, H3ForCausalLM, H3Model


class H3ModelTester:
    """Small H3 configs and inputs (Bamba's / LFM2's tester sizes; right-padded ``tril`` attention masks)."""

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, use_input_mask=True, use_labels=True,
                 vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 state_size=8, ssm_head_dim=1, attn_layer_idx=(1,), num_labels=3):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.state_size = state_size
        self.ssm_head_dim = ssm_head_dim
        self.attn_layer_idx = list(attn_layer_idx)
        self.num_labels = num_labels
        self.pad_token_id = self.bos_token_id = self.eos_token_id = vocab_size - 1  # as MambaModelTester

    def get_config(self):
        return H3Config(
            vocab_size=self.vocab_size,  # rounded up to 104 (pad_vocab_size_multiple=8, the config's default)
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            state_size=self.state_size,
            attn_layer_idx=self.attn_layer_idx,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            ssm_head_dim=self.ssm_head_dim,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)).to(torch_device) if self.use_input_mask else None
        token_labels = ids_tensor([self.batch_size, self.seq_length], self.num_labels) if self.use_labels else None
        return self.get_config(), input_ids, input_mask, token_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}

    def create_and_check_model(self, config, input_ids, input_mask, token_labels):
        model = H3Model(config).to(torch_device).eval()
        model(input_ids, attention_mask=input_mask)
        result = model(input_ids)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_causal_lm(self, config, input_ids, input_mask, token_labels):
        model = H3ForCausalLM(config).to(torch_device).eval()
        result = model(input_ids, attention_mask=input_mask, labels=input_ids)
        self.parent.assertEqual(result.loss.shape, ())
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, config.vocab_size))


class H3CommonTests(ModelTesterMixin, GenerationTesterMixin):
    """What both H3 setups share; ``tester_kwargs`` picks the setup."""

    all_model_classes = (H3Model, H3ForCausalLM)
    tester_kwargs = {}

    def setUp(self):
        self.model_tester = H3ModelTester(self, **self.tester_kwargs)
        self.config_tester = ConfigTester(self, config_class=H3Config, hidden_size=37,
                                          common_properties=["hidden_size", "num_hidden_layers"])

    def _get_conv_state_shape(self, batch_size: int, config):
        """The shift SSM's window of the last ``state_size`` k's (as Bamba / LFM2 override it for their convs)."""
        return (batch_size, config.hidden_size, config.state_size)

    def _get_recurrent_state_shape(self, batch_size: int, config):
        """The diagonal SSM's complex state: (batch, P, P, H, N/2), P the SSM head width, H = d / P heads."""
        width = config.ssm_head_dim
        return (batch_size, width, width, config.hidden_size // width, config.state_size // 2)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_causal_lm(self):
        self.model_tester.create_and_check_causal_lm(*self.model_tester.prepare_config_and_inputs())


@require_torch
class H3HybridModelTest(H3CommonTests, unittest.TestCase):
    """An H3 layer, then attention (``attn_layer_idx=[1]``; LFM2's tester also has one layer of each kind), SSM head
    width 1 (the released models')."""

    tester_kwargs = {"attn_layer_idx": (1,), "ssm_head_dim": 1}

    def test_attention_outputs(self):
        """As Bamba's / LFM2's override: a hybrid returns attention weights for its attention layers only."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        seq_len = self.model_tester.seq_length
        expected = sum(kind == "full_attention" for kind in config.layer_types)
        for model_class in self.all_model_classes:
            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = False
            config.return_dict = True
            model = model_class._from_config(config, attn_implementation="eager").to(torch_device).eval()
            config = model.config
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertIsNotNone(outputs.get("attentions"), "no attentions returned with output_attentions=True")
            self.assertEqual(len(outputs.attentions), expected)

            del inputs_dict["output_attentions"]  # output_attentions set on the config
            config.output_attentions = True
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertIsNotNone(outputs.get("attentions"), "no attentions returned with config.output_attentions")
            self.assertEqual(len(outputs.attentions), expected)
            self.assertListEqual(list(outputs.attentions[0].shape[-3:]),
                                 [config.num_attention_heads, seq_len, seq_len])
            out_len = len(outputs)

            inputs_dict["output_attentions"] = True  # attentions come last, after the hidden states
            inputs_dict["output_hidden_states"] = True
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(out_len + 1, len(outputs))
            self.assertEqual(len(outputs.attentions), expected)


@require_torch
class H3PureSSMModelTest(H3CommonTests, unittest.TestCase):
    """No attention layer; the diagonal SSM has heads of width 2 (outer products k v^T of 2 x 2)."""

    tester_kwargs = {"attn_layer_idx": (), "ssm_head_dim": 2}
    has_attentions = False  # as MambaModelTest: no attention layer, no attention weights

    def test_left_padding_compatibility(self):
        """Run, not skipped: the mixin skips it when ``has_attentions`` is False (as for Mamba, whose layers take no
        padding mask); an H3 layer zeroes padded positions before both SSMs, so padding must not change the logits."""
        if not hasattr(GenerationTesterMixin, "test_left_padding_compatibility"):
            self.skipTest("GenerationTesterMixin is conformance/run.py's empty stand-in")
        self.has_attentions = True
        super().test_left_padding_compatibility()
