"""The crammed BERT model: Hugging Face classes, presets, conversion from and to BERT, parameter/FLOP counts.
`model.save_pretrained(directory, tokenizer=tok)` writes one folder holding both.

Importing this package registers the classes with transformers' Auto* classes (`model_type="crammed_bert"`)
and marks them for `trust_remote_code` export: `save_pretrained` copies the configuration and modeling
files next to the weights, with an `auto_map` in config.json.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from crammer.model.configuration_crammed_bert import CrammedBertConfig
from crammer.model.convert import config_from_hf_bert, from_hf_bert, to_hf_bert
from crammer.model.flops import count_parameters, training_flops_per_token
from crammer.model.modeling_crammed_bert import (
    CrammedBertForMaskedLM,
    CrammedBertForMultipleChoice,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
    CrammedBertPreTrainedModel,
)
from crammer.model.presets import MODEL_PRESETS, ORIGINAL_ARCHITECTURE, make_config

# (Auto class, our class): the same pairs go into every config.json's auto_map for trust_remote_code.
AUTO_CLASSES = (
    (AutoModel, CrammedBertModel),
    (AutoModelForMaskedLM, CrammedBertForMaskedLM),
    (AutoModelForPreTraining, CrammedBertForMaskedLM),
    (AutoModelForSequenceClassification, CrammedBertForSequenceClassification),
    (AutoModelForTokenClassification, CrammedBertForTokenClassification),
    (AutoModelForQuestionAnswering, CrammedBertForQuestionAnswering),
    (AutoModelForMultipleChoice, CrammedBertForMultipleChoice),
)
AutoConfig.register(CrammedBertConfig.model_type, CrammedBertConfig, exist_ok=True)
CrammedBertConfig.register_for_auto_class()
for _auto, _cls in AUTO_CLASSES:
    _auto.register(CrammedBertConfig, _cls, exist_ok=True)
    if _auto is not AutoModelForPreTraining:  # one Auto class per class; the MLM keeps AutoModelForMaskedLM
        _cls.register_for_auto_class(_auto.__name__)
del _auto, _cls

__all__ = [
    "MODEL_PRESETS",
    "ORIGINAL_ARCHITECTURE",
    "CrammedBertConfig",
    "CrammedBertForMaskedLM",
    "CrammedBertForMultipleChoice",
    "CrammedBertForQuestionAnswering",
    "CrammedBertForSequenceClassification",
    "CrammedBertForTokenClassification",
    "CrammedBertModel",
    "CrammedBertPreTrainedModel",
    "config_from_hf_bert",
    "count_parameters",
    "from_hf_bert",
    "make_config",
    "to_hf_bert",
    "training_flops_per_token",
]
