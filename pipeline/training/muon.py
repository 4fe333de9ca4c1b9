"""airbench94_muon's optimizer as one Keras optimizer: Muon for the conv filters, Nesterov
SGD for everything else (BN shifts, the whitening bias, the head).

Built on `keras.optimizers.Muon` where it matches: its momentum buffer (m = mu m + g, the
Nesterov step g + mu m) and its Newton-Schulz orthogonalisation (the same quintic
coefficients and Frobenius normalisation). Where it does not, and why:
- Keras's Muon orthogonalises 2-D variables only and gives a 4-D conv kernel to AdamW;
  airbench94_muon orthogonalises every conv filter as an (out, in * kh * kw) matrix. Here a
  kernel (kh, kw, in, out) is reshaped to (kh * kw * in, out): a permutation of the same
  matrix's rows, which orthogonalisation carries through unchanged.
- Before each step, a filter is rescaled to Frobenius norm sqrt(out channels), as
  airbench94_muon's Muon does (BN follows every conv, so only the direction matters and
  this keeps the step's relative size fixed); Keras's Muon does not.
- No update rescaling (`rms_rate=None`) and no weight decay on filters, as airbench94_muon;
  3 Newton-Schulz steps, its count. It runs them in bfloat16 on a GPU; float32 here.
- The other variables take Nesterov SGD with Keras's momentum form and decoupled decay,
  as the project's SGD does (Keras's Muon would give them AdamW).
"""

from __future__ import annotations

import keras
from keras import ops

NEWTON_SCHULZ_STEPS = 3  # airbench94_muon's zeropower_via_newtonschulz5 default


def is_filter(variable) -> bool:
    """A conv kernel (kh, kw, in, out): what Muon orthogonalises."""
    return len(variable.shape) == 4


class FilterMuon(keras.optimizers.Muon):
    """Muon on conv filters at `learning_rate * muon_lr_scale`, Nesterov SGD (momentum
    `momentum`) on the rest at `learning_rate`.

    Args:
        learning_rate: the SGD variables' rate (a float or schedule); the filters' rate is
            this times `muon_lr_scale`, so both follow the one schedule.
        muon_lr_scale: filters' rate / SGD rate (airbench94_muon: 0.24 / (0.053 * 2000)).
        momentum: the SGD variables' Nesterov momentum (airbench94_muon: 0.85).
        muon_momentum: the filters' Nesterov momentum (airbench94_muon: 0.6).
        weight_decay: decoupled, for the SGD variables only (lr * wd * w each step).
    """

    def __init__(
        self,
        learning_rate,
        muon_lr_scale: float,
        momentum: float,
        muon_momentum: float,
        weight_decay: float | None = None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            momentum=muon_momentum,
            ns_steps=NEWTON_SCHULZ_STEPS,
            nesterov=True,
            rms_rate=None,
            **kwargs,
        )
        self.muon_lr_scale = muon_lr_scale
        self.sgd_momentum = momentum

    def build(self, var_list):
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, var_list)
        # One buffer per variable, Muon's and SGD's alike; no Adam velocities.
        self.momentums = [
            self.add_variable_from_reference(reference_variable=v, name="momentum")
            for v in var_list
        ]
        self.adam_velocities = [None] * len(var_list)

    def update_step(self, gradient, variable, learning_rate):
        m = self.momentums[self._get_variable_index(variable)]
        gradient = ops.cast(gradient, variable.dtype)
        lr = ops.cast(learning_rate, variable.dtype)
        if is_filter(variable):
            self._filter_step(gradient, variable, lr * self.muon_lr_scale, m)
        else:
            self._sgd_step(gradient, variable, lr, m)

    def _filter_step(self, gradient, variable, lr, m):
        kh, kw, cin, cout = variable.shape
        self.assign(variable, variable * (cout**0.5 / ops.norm(ops.reshape(variable, [-1]))))
        self.assign(m, self.momentum * m + gradient)
        g = gradient + self.momentum * m  # Nesterov
        update = self.zeropower_via_newtonschulz5(
            ops.reshape(g, (kh * kw * cin, cout)), self.ns_steps
        )
        self.assign_sub(variable, lr * ops.reshape(update, variable.shape))

    def _sgd_step(self, gradient, variable, lr, m):
        # Keras's SGD with Nesterov momentum: m = mu m - lr g; w += mu m - lr g.
        self.assign(m, self.sgd_momentum * m - lr * gradient)
        self.assign_add(variable, self.sgd_momentum * m - lr * gradient)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if not is_filter(variable) and self._use_weight_decay(variable):
                lr = ops.cast(self.learning_rate, variable.dtype)
                wd = ops.cast(self.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * lr)

    def get_config(self):
        # The base optimizer's fields and this class's own: what `__init__` takes back.
        config = keras.optimizers.Optimizer.get_config(self)
        config.update(
            muon_lr_scale=self.muon_lr_scale,
            momentum=self.sgd_momentum,
            muon_momentum=self.momentum,
        )
        return config
