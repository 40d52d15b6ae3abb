"""Publishing a model folder: its Hugging Face model card (`card`) and `cram push` (`push`).

Reads a run folder's files like `report` does; imports neither torch nor transformers (the GLUE reference rows
come from `crammer.eval.glue` only when a card has GLUE results to compare).
"""
