"""`cram run`: data preparation, budgeted pretraining, GLUE and the report chained in one resumable run
folder (`layout`: where each stage writes; `state`: which stages finished; `presets`; `run`: the chain)."""
