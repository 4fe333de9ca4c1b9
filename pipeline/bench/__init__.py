"""Measuring, not training: throughput contenders (`benchmark`), the notebook's and the
textbook's baselines (`baselines`), the profiler summary (`op_profile`) and the PyTorch twin
(`torch_twin`). Production code never imports this package."""
