"""h3-hf: H3, S4D and S5 state-space models for Hugging Face transformers.

Importing the package registers the models with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .configuration_s4d import S4DConfig
from .modeling_s4d import S4DForSequenceClassification, S4DModel, S4DPreTrainedModel
from .training import create_ssm_optimizer, ssm_parameter_groups

AutoConfig.register("s4d", S4DConfig, exist_ok=True)
AutoModel.register(S4DConfig, S4DModel, exist_ok=True)
AutoModelForSequenceClassification.register(S4DConfig, S4DForSequenceClassification, exist_ok=True)

__all__ = [
    "S4DConfig",
    "S4DModel",
    "S4DPreTrainedModel",
    "S4DForSequenceClassification",
    "ssm_parameter_groups",
    "create_ssm_optimizer",
]
