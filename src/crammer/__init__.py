"""crammer: pretrain a BERT-style masked language model on one GPU in a fixed time budget."""

__version__ = "0.1.0"
