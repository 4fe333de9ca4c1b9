"""Everything from bytes on disk to a trained model.

`config` (the frozen config tree and `--set` parsing), `experiments` (every named recipe,
the one registry), `errors` (user errors vs divergence), `run_length` (steps per epoch,
computed once), `notebook_api` (the course notebook's names on the project); sub-packages
`data` (sources, tf.data, augmentation), `training` (steps, Trainer, fit, run folder,
precision, strategy) and `bench` (benchmarks and baselines).
Dependencies point one way: bench -> training -> data -> config; models below them all.
"""
