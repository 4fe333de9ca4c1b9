"""What the controller does between step calls, at named points (as Orbit's controller runs
its train actions): Lookahead every few steps, freezing the whitening stem's bias.

An action says how often it acts (`every`, in global steps); the controller ends its
compiled step calls at those steps, so an action sees the weights exactly as they are
after that step, whatever the call size, a resume or a stop in between. What an action
must carry across a resume is in `state()`, which the run's checkpoint holds.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.config import Config, ConfigError
from pipeline.run_length import RunLength, is_due, steps_until_due

LOOKAHEAD_BASE = 0.95  # airbench94: decay 0.95**5 * progress**3 at every 5th step


class Action:
    """Does nothing at every point; subclasses override the points they act at."""

    every = 0  # global steps between `after_steps` calls; 0 = never

    def begin(self, trainer) -> None:
        """Training starts or resumes at `trainer.global_step`."""

    def after_steps(self, trainer) -> None:
        """The global step just reached a multiple of `every`."""

    def end(self, trainer) -> None:
        """The run's last step is done; its last evaluation comes next."""

    def state(self) -> dict:
        """Trackables a resume needs, by name (the run's checkpoint keeps them)."""
        return {}


class Actions:
    """The run's actions, called by the controller."""

    def __init__(self, actions: list[Action], length: RunLength):
        self.actions, self.length = actions, length

    def steps_to_next(self, step: int) -> int:
        """Steps from global `step` to the next step any action acts at (or to the end)."""
        ahead = [steps_until_due(step, a.every) for a in self.actions if a.every]
        return min([self.length.total_steps - step, *ahead])

    def begin(self, trainer) -> None:
        for action in self.actions:
            action.begin(trainer)

    def after_call(self, trainer) -> None:
        step = trainer.global_step
        for action in self.actions:
            if is_due(step, action.every):
                action.after_steps(trainer)
        if step == self.length.total_steps:
            for action in self.actions:
                action.end(trainer)

    def state(self) -> dict:
        return {f"action_{k}": v for a in self.actions for k, v in a.state().items()}


class Lookahead(Action):
    """airbench94's Lookahead: every `every` steps a slow copy of each float variable (weights
    and BN statistics) moves toward it, `slow += (1 - decay) * (w - slow)` with decay
    `LOOKAHEAD_BASE**every * (step / total)**3`, and the variable is set to the slow copy;
    after the last step the variables become the slow copy.

    Early in the run the decay is near 0 (the slow copy follows the weights); late, near
    0.77, it averages the last syncs.
    """

    def __init__(self, model, every: int, total_steps: int, strategy: tf.distribute.Strategy):
        self.every, self.total = every, total_steps
        self.variables = [v for v in model.variables if tf.as_dtype(v.dtype).is_floating]
        with strategy.scope():
            self.slow = [
                tf.Variable(v, trainable=False, name="lookahead_slow") for v in self.variables
            ]

        @tf.function
        def sync(decay):
            for slow, variable in zip(self.slow, self.variables, strict=True):
                value = tf.cast(variable, slow.dtype)
                slow.assign(slow + (1.0 - decay) * (value - slow))
                variable.assign(tf.cast(slow.read_value(), variable.dtype))

        self._sync = sync

    def decay(self, step: int) -> float:
        return LOOKAHEAD_BASE**self.every * (step / self.total) ** 3

    def after_steps(self, trainer) -> None:
        self._sync(tf.constant(self.decay(trainer.global_step), tf.float32))

    def end(self, trainer) -> None:
        self._sync(tf.constant(1.0, tf.float32))  # decay 1: the variables become the slow copy

    def state(self) -> dict:
        return {"lookahead": self.slow}


class FreezeAfter(Action):
    """Trains `variables` for the first `freeze_step` steps, then freezes them: they leave the
    trained set (no update, no weight decay; their momentum is kept, as PyTorch keeps a
    frozen parameter's), and the controller's step is rebuilt for the new set."""

    def __init__(self, variables: list, freeze_step: int):
        self.variables, self.freeze_step = variables, freeze_step
        self.every = freeze_step  # due at the freeze (at its multiples it changes nothing)

    def _apply(self, trainer) -> None:
        trained = trainer.global_step < self.freeze_step
        for variable in self.variables:
            variable.trainable = trained

    begin = after_steps = _apply


def from_config(cfg: Config, model, length: RunLength, strategy) -> Actions:
    """The actions `cfg` asks for.

    Raises:
        ConfigError: for a freeze on a model without a whitening stem.
    """
    optim_cfg = cfg.optim
    actions: list[Action] = []
    if optim_cfg.whiten_bias_epochs:
        actions.append(
            FreezeAfter([_whitening_bias(model)], length.steps_for(optim_cfg.whiten_bias_epochs))
        )
    if optim_cfg.lookahead_every_steps:
        actions.append(
            Lookahead(model, optim_cfg.lookahead_every_steps, length.total_steps, strategy)
        )
    return Actions(actions, length)


def _whitening_bias(model):
    layer = None
    if hasattr(model, "get_layer"):
        try:
            layer = model.get_layer("whiten")
        except ValueError:
            layer = None
    if layer is None or getattr(layer, "bias", None) is None:
        raise ConfigError(
            "optim.whiten_bias_epochs freezes the whitening stem's bias, and this model has "
            "none: use custom_convnet with model.params.stem=whiten, or set "
            "optim.whiten_bias_epochs=0"
        )
    return layer.bias
