"""Native TensorFlow ops for what TensorFlow's own kernels do slowly on some CPUs, built
from their C++ source on first use (`library`) and used only where they measured faster."""
