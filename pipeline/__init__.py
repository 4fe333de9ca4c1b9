"""Everything from bytes on disk to a trained model.

`config` (the frozen config tree and `--set` parsing), `experiments` (every named recipe,
the one registry), `errors` (user errors vs divergence, the exit codes), `files` (atomic
writes), `run_length` (steps per epoch, computed once; the one cadence helper),
`notebook_api` (the course notebook's names on the project); sub-packages `data`
(sources, tf.data, augmentation), `training` (steps, Trainer, fit, the controller and its
actions, run folder, precision), `runtime` (strategy and cluster, signals, processes, the
output lock), `inference` (a run's model restored, evaluated, predicting) and `bench`
(benchmarks and baselines).
Dependencies point one way: bench -> inference -> training -> data, runtime -> config;
models below them all.
"""
