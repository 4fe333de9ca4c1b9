"""The notebook's layer sizes, shared by its four API levels (recipes and bars live with
the experiments, in pipeline/experiments.py)."""

FC_HIDDEN = 4000
# (filters, kernel) per conv layer: Parts II/III use 32-5x5 then 16-3x3; Parts IV's
# Sequential and functional convnets use 16-5x5 then 32-3x3.
CONVNET_LAYERS = {
    "lowlevel": ((32, 5), (16, 3)),
    "subclass": ((32, 5), (16, 3)),
    "sequential": ((16, 5), (32, 3)),
    "functional": ((16, 5), (32, 3)),
}
