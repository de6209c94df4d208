"""Makes transformers' common tests treat the h3-hf models as if they were built into transformers.

``tests/test_modeling_common.py`` picks the inputs and the checks of many tests by looking a model class's name up in
transformers' own ``MODEL_*_MAPPING_NAMES`` tables (labels of ``_prepare_for_class``, ``test_inputs_embeds``,
``test_problem_types``, ``test_load_with_mismatched_shapes``...). ``AutoModel*.register`` (what ``import h3_hf`` does)
does not add to those tables, so without this a causal LM or a classifier of h3-hf would silently skip those checks.
"""

from transformers.models.auto import modeling_auto

import h3_hf  # noqa: F401  (registers the configs and models with the Auto classes)

MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": {"h3": "H3Model", "s4d": "S4DModel", "s5": "S5Model"},
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": {"h3": "H3ForCausalLM"},
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": {"s4d": "S4DForSequenceClassification",
                                                        "s5": "S5ForSequenceClassification"},
}

for table, entries in MAPPING_NAMES.items():
    getattr(modeling_auto, table).update(entries)
