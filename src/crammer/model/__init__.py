"""The crammed BERT model: Hugging Face classes, presets, conversion from BERT, parameter/FLOP counts.
`model.save_pretrained(directory, tokenizer=tok)` writes one folder holding both.

Importing this package registers the classes with transformers' Auto* classes (`model_type="crammed_bert"`)
and marks them for `trust_remote_code` export: `save_pretrained` copies the configuration and modeling
files next to the weights, with an `auto_map` in config.json.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from crammer.model.configuration_crammed_bert import CrammedBertConfig
from crammer.model.convert import config_from_hf_bert, from_hf_bert
from crammer.model.flops import count_parameters, training_flops_per_token
from crammer.model.modeling_crammed_bert import (
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertModel,
    CrammedBertPreTrainedModel,
)
from crammer.model.presets import MODEL_PRESETS, ORIGINAL_ARCHITECTURE, make_config

AutoConfig.register(CrammedBertConfig.model_type, CrammedBertConfig, exist_ok=True)
AutoModel.register(CrammedBertConfig, CrammedBertModel, exist_ok=True)
AutoModelForMaskedLM.register(CrammedBertConfig, CrammedBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(CrammedBertConfig, CrammedBertForSequenceClassification, exist_ok=True)

CrammedBertConfig.register_for_auto_class()
CrammedBertModel.register_for_auto_class("AutoModel")
CrammedBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
CrammedBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MODEL_PRESETS",
    "ORIGINAL_ARCHITECTURE",
    "CrammedBertConfig",
    "CrammedBertForMaskedLM",
    "CrammedBertForSequenceClassification",
    "CrammedBertModel",
    "CrammedBertPreTrainedModel",
    "config_from_hf_bert",
    "count_parameters",
    "from_hf_bert",
    "make_config",
    "training_flops_per_token",
]
