"""Model families, one per file, found by `registry`: the notebook's variants at four API
levels (`lowlevel`, `subclass`, `sequential`, `functional`, sizes in `notebook`) and the
open challenge's `custom_convnet` (fused layers in `fast_layers`). Builders return logits;
how each model is trained lives in pipeline/experiments.py. Imports nothing from the rest
of the project."""
