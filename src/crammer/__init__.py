"""crammer: pretrain a BERT-style masked language model on one GPU in a fixed time budget.

Importing crammer registers the crammed BERT classes with transformers' Auto* classes, so
`AutoModelForMaskedLM.from_pretrained(DIR)` works for our checkpoints without `trust_remote_code`.
"""

__version__ = "0.1.0"

import crammer.model  # noqa: E402,F401  (registers model_type "crammed_bert" with the Auto classes)
