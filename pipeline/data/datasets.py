"""tf.data input pipelines over the loaded splits: shuffled, augmented, batched, prefetched,
and shardable by `tf.distribute` input context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from pipeline.config import DataConfig, TrainConfig
from pipeline.data import augment
from pipeline.data.sources import Split, Splits
from pipeline.errors import UserError
from pipeline.run_length import RunLength, run_length

AUTOTUNE = tf.data.AUTOTUNE


class InputError(UserError):
    """Batch size, replicas and data sizes do not fit together."""


@dataclass(frozen=True)
class Inputs:
    """What the loop needs from the data: datasets, counts and the device-side preprocessing."""

    splits: Splits
    cfg: DataConfig
    seed: int
    # Evaluation datasets, built once: each build copies its split into a new constant,
    # and rebuilding them every epoch and every search trial kept ratcheting memory up.
    _eval_datasets: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def with_data(self, cfg: DataConfig) -> Inputs:
        """The same splits fed as `cfg` says (another batch size, other augmentations): a
        search trial's own recipe over the data loaded once. Evaluation datasets are shared
        while their batch is the same.

        Raises:
            InputError: when `cfg` asks for other splits than those loaded.
        """
        loaded = (self.cfg.source, self.cfg.train_examples, self.cfg.val_examples)
        if (cfg.source, cfg.train_examples, cfg.val_examples) != loaded:
            raise InputError(
                "a trial's data config asks for other splits than the search loaded; a search "
                "space may change how the data is fed, not which data"
            )
        inputs = make_inputs(self.splits, cfg, self.seed)
        if cfg.eval_batch_size == self.cfg.eval_batch_size:
            object.__setattr__(inputs, "_eval_datasets", self._eval_datasets)
        return inputs

    def run_length(self, epochs: float, cut: int = 0) -> RunLength:
        """`epochs` (fractional too) of this training split's full batches, each cut to
        `cut` steps if > 0."""
        return run_length(len(self.splits.train.labels), self.cfg.batch_size, epochs, cut)

    def length_for_config(self, train_cfg: TrainConfig) -> RunLength:
        """The length a run's `TrainConfig` asks for: its epochs, each cut to
        `max_steps_per_epoch` when that is > 0."""
        return self.run_length(train_cfg.epochs, train_cfg.max_steps_per_epoch)

    def train_dataset_fn(
        self, length: RunLength, start_epoch: int = 0, start_step: int = 0
    ) -> Callable:
        """A `dataset_fn(input_context)` for `strategy.distribute_datasets_from_function`:
        epochs `start_epoch` to `length.epochs` of `length.steps_per_epoch` steps (the last
        one cut where the run's `total_steps` end), the first of them from its step
        `start_step` on (a run resumed mid-epoch).

        Each epoch's order is a stateless shuffle of (seed, epoch), so a resumed run sees
        exactly the batches it would have seen, cut epochs included. Every global batch is
        the same whatever the replica count: input pipeline p takes its contiguous share
        and splits it into one batch per local replica, in replica order.
        """
        return lambda ctx=None: train_dataset(self, length, start_epoch, ctx, start_step)

    def eval_dataset(self, split: str, ctx: tf.distribute.InputContext | None = None):
        if ctx is not None:  # a per-worker shard: built where the strategy asks for it
            return eval_dataset(getattr(self.splits, split), self.splits, self.cfg, ctx)
        if split not in self._eval_datasets:
            self._eval_datasets[split] = eval_dataset(
                getattr(self.splits, split), self.splits, self.cfg
            )
        return self._eval_datasets[split]

    def device_preprocess(self, images: tf.Tensor, aug: tf.Tensor) -> tf.Tensor:
        """Normalise + augment a uint8 batch inside the compiled step (`augment_on_device`).

        `aug` is (B, 2) int64: each image's key and the epoch.
        """
        return augment.preprocess(
            images, aug[:, 0], aug[0, 1], self.cfg.augment, self.splits.mean, self.splits.std
        )


def make_inputs(splits: Splits, cfg: DataConfig, seed: int) -> Inputs:
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise InputError(f"batch sizes must be >= 1; got {cfg.batch_size}, {cfg.eval_batch_size}")
    if len(splits.train.labels) < cfg.batch_size:
        raise InputError(
            f"batch size {cfg.batch_size} is larger than the {len(splits.train.labels)} "
            "training examples: lower --batch-size or raise --train-examples."
        )
    return Inputs(splits, cfg, seed)


def _shares(global_batch: int, ctx: tf.distribute.InputContext | None) -> tuple[int, int, int]:
    """(pipelines, this pipeline's id, local replicas) with a check that the batch divides."""
    if ctx is None:
        return 1, 0, 1
    replicas = ctx.num_replicas_in_sync
    if global_batch % replicas:
        lo = global_batch // replicas * replicas
        raise InputError(
            f"batch size {global_batch} must divide by the {replicas} replicas: "
            f"use {lo or replicas} or {lo + replicas}."
        )
    return ctx.num_input_pipelines, ctx.input_pipeline_id, replicas // ctx.num_input_pipelines


def train_dataset(
    inputs: Inputs,
    length: RunLength,
    start_epoch: int = 0,
    ctx: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    cfg, splits, seed = inputs.cfg, inputs.splits, inputs.seed
    pipelines, pipeline_id, local = _shares(cfg.batch_size, ctx)
    batch = cfg.batch_size // (pipelines * local)
    steps = length.steps_per_epoch
    n = len(splits.train.labels)

    def epoch_batches(epoch):
        # Shuffle whole indices, cut into global batches; drop the remainder (and what a
        # cut epoch leaves out) so every step has a full batch on every replica.
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        mine = tf.reshape(order[: steps * cfg.batch_size], [steps, pipelines, local, batch])
        mine = tf.reshape(mine[:, pipeline_id], [steps * local, batch])
        epochs_col = tf.fill([steps * local], epoch)
        return tf.data.Dataset.from_tensor_slices((mine, epochs_col))

    batches = tf.data.Dataset.range(start_epoch, length.epochs).flat_map(epoch_batches)
    # Skipped as indices, before any image is gathered or augmented.
    batches = batches.skip(start_step * local)
    # A fractional last epoch: the run ends mid-epoch, as airbench94's 9.9 epochs do.
    batches = batches.take((length.total_steps - start_epoch * steps - start_step) * local)
    gather = _memory_gather(splits.train)
    # XLA fuses shift, flip, cast and normalise into one pass instead of one per op.
    preprocess = tf.function(
        lambda images, keys, epoch: augment.preprocess(
            images, keys, epoch, cfg.augment, splits.mean, splits.std
        ),
        jit_compile=True,
    )

    def make_batch(idx, epoch):
        images, labels = gather(idx)
        keys = augment.image_keys(idx, seed)
        if cfg.augment_on_device:
            return (images, tf.stack([keys, tf.fill(tf.shape(keys), epoch)], axis=1)), labels
        return preprocess(images, keys, epoch), labels

    return batches.map(make_batch, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(
        AUTOTUNE
    )


def _memory_gather(split: Split) -> Callable:
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    return lambda idx: (tf.gather(images, idx), tf.gather(labels, idx))


def eval_dataset(
    split: Split, splits: Splits, cfg: DataConfig, ctx: tf.distribute.InputContext | None = None
) -> tf.data.Dataset:
    """Normalised, in order, last batch kept (no example is left out of the score)."""
    pipelines, pipeline_id, local = _shares(cfg.eval_batch_size, ctx)
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if pipelines > 1:
        ds = ds.shard(pipelines, pipeline_id)
    ds = ds.batch(cfg.eval_batch_size // pipelines)
    return ds.map(
        lambda x, y: (augment.normalise(x, splits.mean, splits.std), y), num_parallel_calls=AUTOTUNE
    ).prefetch(AUTOTUNE)
