"""crammer: pretrain a BERT-style masked language model on one GPU in a fixed time budget.

`import crammer` is cheap (the command line starts without torch); `import crammer.model` registers the
crammed BERT classes with transformers' Auto* classes, so `AutoModelForMaskedLM.from_pretrained(DIR)` works
for our checkpoints without `trust_remote_code`.
"""

__version__ = "0.1.0"
