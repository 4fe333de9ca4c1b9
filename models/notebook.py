"""The notebook's sizes and training recipes, shared by its four API levels."""

FC_HIDDEN = 4000
# (filters, kernel) per conv layer: Parts II/III use 32-5x5 then 16-3x3; Parts IV's
# Sequential and functional convnets use 16-5x5 then 32-3x3.
CONVNET_LAYERS = {
    "lowlevel": ((32, 5), (16, 3)),
    "subclass": ((32, 5), (16, 3)),
    "sequential": ((16, 5), (32, 3)),
    "functional": ((16, 5), (32, 3)),
}
# The notebook trains every variant at batch 64 without augmentation.
_BASE = {"data.batch_size": 64, "train.epochs": 1}
FC_RECIPE = {**_BASE, "optim.optimizer": "sgd", "optim.lr": 1e-2}
CONVNET_RECIPES = {
    "lowlevel": {**_BASE, "optim.optimizer": "sgd", "optim.lr": 3e-3},
    "subclass": {**_BASE, "optim.optimizer": "nesterov", "optim.momentum": 0.9, "optim.lr": 3e-3},
    "sequential": {**_BASE, "optim.optimizer": "nesterov", "optim.momentum": 0.9, "optim.lr": 5e-4},
    "functional": {**_BASE, "optim.optimizer": "nesterov", "optim.momentum": 0.9, "optim.lr": 5e-4},
}
# The notebook's bar: validation accuracy after one epoch on the 49,000 / 1,000 split.
BARS = {
    "lowlevel_two_layer_fc": 0.40,
    "lowlevel_three_layer_convnet": 0.43,
    "subclass_two_layer_fc": 0.40,
    "subclass_three_layer_convnet": 0.50,
    "sequential_two_layer_fc": 0.40,
    "sequential_three_layer_convnet": 0.45,
    "functional_two_layer_fc": 0.40,
    "functional_three_layer_convnet": 0.45,
}
