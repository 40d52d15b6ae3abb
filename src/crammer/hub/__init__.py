"""Publishing a model folder: its Hugging Face model card (`card`) and `cram push` (`push`).

Reads a run folder's files through `crammer.runfiles`, like `report` does; imports neither torch nor transformers,
nor the stages that write those files (GLUE's results.json carries its own columns and reference rows).
"""
