"""Everything the Controller does besides training steps, as one kind of action (Orbit's
actions are callables too): when it is due (a `When`), what it does (`__call__`), and what
a checkpoint must keep of it (`state`).

`for_run` is the run's one list, in the order actions act at a point: what changes the
training state (the whitening freeze, Lookahead) before what validates, records, saves
or reports it, so a checkpoint at a step holds their effect. A new action is a class here
and an entry in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from pipeline.config import Config, ConfigError, TrainConfig
from pipeline.run_length import RunLength, is_due, steps_until_due
from pipeline.training import progress

LOOKAHEAD_BASE = 0.95  # airbench94: decay 0.95**5 * progress**3 at every 5th step

# The points of a run, in the order the Controller reaches them.
POINTS = ("begin", "epoch_begin", "steps", "epoch_end", "after_epoch", "stopped", "end")


@dataclass(frozen=True)
class At:
    """Where the run stands when an action is called.

    `point` is one of POINTS: "begin" (training starts or resumes), "epoch_begin",
    "steps" (a step call ended), "epoch_end" (the epoch's row is `history[-1]`, not yet
    complete), "after_epoch" (its row is complete; `stopping`: every worker agreed to stop
    here), "stopped" (a stop agreed inside an epoch), "end" (the run's last epoch is done).
    """

    point: str
    trainer: object
    history: list
    global_step: int
    epoch: int  # epochs done; at "epoch_end" and "after_epoch" the one just trained counts
    epoch_step: int  # steps done in the epoch in progress (0 between epochs)
    epoch_complete: bool
    position: str  # "epoch 3, step 17/97" or "end of epoch 2", for messages
    start_epoch: int  # the epoch this run (or its resume) started at
    last_step: bool  # the run's last step is done
    last_epoch: bool
    stopping: bool = False


@dataclass(frozen=True)
class When:
    """When an action is due: at named `points`; at "steps", every `every_steps` global
    steps, after the run's `last_step`, every `every_epoch_steps` steps inside an epoch
    (not at its end); at "after_epoch", every `every_epochs` epochs counted from the run's
    start, after the `last_epoch`, and where a stop is agreed (`stopping`)."""

    points: tuple[str, ...] = ()
    every_steps: int = 0
    last_step: bool = False
    every_epoch_steps: int = 0
    every_epochs: int = 0
    last_epoch: bool = False
    stopping: bool = False

    def due(self, at: At) -> bool:
        if at.point in self.points:
            return True
        if at.point == "steps":
            inside = not at.epoch_complete and is_due(at.epoch_step, self.every_epoch_steps)
            return (
                is_due(at.global_step, self.every_steps)
                or inside
                or (self.last_step and at.last_step)
            )
        if at.point == "after_epoch":
            return (
                is_due(at.epoch - at.start_epoch, self.every_epochs)
                or (self.last_epoch and at.last_epoch)
                or (self.stopping and at.stopping)
            )
        return False

    def steps_to_next(self, at: At) -> int | None:
        """Steps from `at` until this is next due at "steps"; None: no step cadence."""
        ahead = [
            steps_until_due(at.global_step, self.every_steps),
            steps_until_due(at.epoch_step, self.every_epoch_steps),
        ]
        return min((n for n in ahead if n), default=None)


class Action:
    """Does nothing, never; subclasses set `when` and override `__call__`."""

    when = When()

    def __call__(self, at: At) -> None:
        """Acts at `at`, a point where `when` is due."""

    def state(self) -> dict:
        """Trackables a resume needs, by name (the run's checkpoint keeps them)."""
        return {}


class FreezeAfter(Action):
    """Trains `variables` for the first `freeze_step` steps, then freezes them: they leave the
    trained set (no update, no weight decay; their momentum is kept, as PyTorch keeps a
    frozen parameter's), and the Trainer's step is traced again for the new set. Applied at
    the start too, so a resume past the freeze stays frozen."""

    def __init__(self, variables: list, freeze_step: int):
        self.variables, self.freeze_step = variables, freeze_step
        # Due at the freeze (at its multiples it changes nothing).
        self.when = When(points=("begin",), every_steps=freeze_step)

    def __call__(self, at: At) -> None:
        trained = at.global_step < self.freeze_step
        for variable in self.variables:
            variable.trainable = trained


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
        self.when = When(every_steps=every, last_step=True)
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

    def __call__(self, at: At) -> None:
        if is_due(at.global_step, self.every):
            self._sync(tf.constant(self.decay(at.global_step), tf.float32))
        if at.last_step:  # decay 1: the variables become the slow copy
            self._sync(tf.constant(1.0, tf.float32))

    def state(self) -> dict:
        return {"lookahead": self.slow}


class Validate(Action):
    """Scores each epoch on the validation split (BN statistics refreshed first when the
    recipe asks), into its row."""

    when = When(points=("epoch_end",))

    def __call__(self, at: At) -> None:
        at.trainer.recalibrate()
        val = at.trainer.evaluate("val")
        if val:
            at.history[-1].update(val_loss=val["loss"], val_accuracy=val["accuracy"])


class Record(Action):
    """Each epoch's row into the run folder: history.json, TensorBoard scalars, curves.png."""

    when = When(points=("epoch_end",))

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def __call__(self, at: At) -> None:
        self.run_dir.record_epoch(at.history)


class Checkpoints(Action):
    """Saves the run's checkpoint every `checkpoint_every_epochs` epochs counted from the
    epoch a run (or its resume) starts at, after the last epoch, every
    `checkpoint_every_steps` steps inside an epoch, and wherever a stop is agreed."""

    def __init__(self, run_dir, train_cfg: TrainConfig):
        self.run_dir, self._saved_step = run_dir, None
        self.when = When(
            points=("stopped",),
            every_epoch_steps=train_cfg.checkpoint_every_steps,
            every_epochs=train_cfg.checkpoint_every_epochs,
            last_epoch=True,
            stopping=True,
        )

    def __call__(self, at: At) -> None:
        if at.global_step != self._saved_step:  # a stop on a cadence step saves it once
            self.run_dir.save(at.global_step, at.position)
            self._saved_step = at.global_step


class Report(Action):
    """The epoch's line through `log`, and the Keras callbacks' hooks (keras-tuner's
    included): train begin and end, epoch begin and end with the epoch's scalars."""

    when = When(points=("begin", "epoch_begin", "after_epoch", "end"))

    def __init__(self, hooks: keras.callbacks.CallbackList, log: Callable[[str], None]):
        self.hooks, self.log = hooks, log

    def __call__(self, at: At) -> None:
        if at.point == "begin":
            self.hooks.on_train_begin()
        elif at.point == "epoch_begin":
            self.hooks.on_epoch_begin(at.epoch)
        elif at.point == "after_epoch":
            row = at.history[-1]
            self.log(progress.summary(row, at.trainer.length.epochs))
            self.hooks.on_epoch_end(row["epoch"] - 1, progress.epoch_logs(row))
        else:
            self.hooks.on_train_end()


def for_run(
    cfg: Config, model, length: RunLength, strategy, run_dir, hooks, log: Callable[[str], None]
) -> list[Action]:
    """The run's actions, in the order they act at each point.

    Raises:
        ConfigError: for a freeze on a model without a whitening stem.
    """
    return [
        *state_actions(cfg, model, length, strategy),
        Validate(),
        Record(run_dir),
        Checkpoints(run_dir, cfg.train),
        Report(hooks, log),
    ]


def state_actions(cfg: Config, model, length: RunLength, strategy) -> list[Action]:
    """The actions on the training state that `cfg` asks for: the freeze, then Lookahead.

    Raises:
        ConfigError: for a freeze on a model without a whitening stem.
    """
    optim_cfg = cfg.optim
    found: list[Action] = []
    if optim_cfg.whiten_bias_epochs:
        found.append(
            FreezeAfter([_whitening_bias(model)], length.steps_for(optim_cfg.whiten_bias_epochs))
        )
    if optim_cfg.lookahead_every_steps:
        found.append(
            Lookahead(model, optim_cfg.lookahead_every_steps, length.total_steps, strategy)
        )
    return found


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
