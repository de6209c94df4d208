"""transformers' common model and config tests on the S4D and S5 classifiers (token inputs).

A sequence classifier cannot generate, so there is no GenerationTesterMixin here (ModelTesterMixin checks that).
Run through ``conformance/run.py``, which makes transformers' ``tests/`` importable as the package ``tests``.
"""

import unittest

import torch
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, ids_tensor
from transformers.testing_utils import require_torch, torch_device

from h3_hf import S4DConfig, S4DForSequenceClassification, S4DModel, S5Config, S5ForSequenceClassification, S5Model


class ClassifierModelTester:
    """Small configs and inputs for a backbone + sequence-classification head (sizes of transformers' testers:
    batch 13, length 7, vocab 99, width 32; right-padded ``tril`` attention masks as Bamba's / LFM2's testers)."""

    def __init__(self, parent, config_class, base_model_class, classification_class, config_kwargs=None,
                 batch_size=13, seq_length=7, is_training=True, use_input_mask=True, use_labels=True, vocab_size=99,
                 hidden_size=32, num_hidden_layers=2, state_size=8, num_labels=3):
        self.parent = parent
        self.config_class = config_class
        self.base_model_class = base_model_class
        self.classification_class = classification_class
        self.config_kwargs = config_kwargs or {}
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.state_size = state_size
        self.num_labels = num_labels
        self.pad_token_id = 0

    def get_config(self):
        return self.config_class(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                                 num_hidden_layers=self.num_hidden_layers, state_size=self.state_size,
                                 num_labels=self.num_labels, pad_token_id=self.pad_token_id, **self.config_kwargs)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)).to(torch_device) if self.use_input_mask else None
        sequence_labels = ids_tensor([self.batch_size], self.num_labels) if self.use_labels else None
        return self.get_config(), input_ids, input_mask, sequence_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}

    def create_and_check_model(self, config, input_ids, input_mask, sequence_labels):
        model = self.base_model_class(config).to(torch_device).eval()
        model(input_ids, attention_mask=input_mask)
        result = model(input_ids)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_for_sequence_classification(self, config, input_ids, input_mask, sequence_labels):
        model = self.classification_class(config).to(torch_device).eval()
        result = model(input_ids, attention_mask=input_mask, labels=sequence_labels)
        self.parent.assertEqual(result.loss.shape, ())
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))


class ClassifierCommonTests(ModelTesterMixin):
    """What the S4D and S5 setups share; the subclasses name the config and model classes."""

    config_class = None
    config_kwargs = {}
    has_attentions = False  # as MambaModelTest: an SSM has no attention weights

    def setUp(self):
        base, head = self.all_model_classes
        self.model_tester = ClassifierModelTester(self, self.config_class, base, head, config_kwargs=self.config_kwargs)
        self.config_tester = ConfigTester(self, config_class=self.config_class, hidden_size=37,
                                          common_properties=["hidden_size", "num_hidden_layers"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_sequence_classification(self):
        self.model_tester.create_and_check_for_sequence_classification(*self.model_tester.prepare_config_and_inputs())


@require_torch
class S4DModelTest(ClassifierCommonTests, unittest.TestCase):
    all_model_classes = (S4DModel, S4DForSequenceClassification)
    config_class = S4DConfig


@require_torch
class S5ModelTest(ClassifierCommonTests, unittest.TestCase):
    all_model_classes = (S5Model, S5ForSequenceClassification)
    config_class = S5Config
    config_kwargs = {"blocks": 2}  # HiPPO blocks of 4 states (even, as conj_sym needs)
