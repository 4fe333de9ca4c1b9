"""Where and how a run executes, apart from what it trains: the strategy and cluster
(`distribute`: TF_CONFIG or SLURM), stop requests from signals (`preemption`), one run per
output folder (`out_claim`), local multi-process launches (`launch`) in a loopback-only
network namespace (`private_network`), what the machine has (`hardware`: CPU flags and
model, GPUs), TensorFlow's inter-op pool on a CPU (`threads`). Imports nothing of the ML
core."""
