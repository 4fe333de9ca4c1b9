"""Throughput measurements shared by `cifar-bench`: images per second, medians of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable


def resident_memory_mib() -> float | None:
    """This process's resident memory now (Linux /proc), in MiB; None where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _time_passes(one_pass: Callable[[], int], repeats: int, warmup: int = 1) -> dict:
    """Calls `one_pass() -> images` `warmup + repeats` times; images/s of the timed passes."""
    runs, images = [], 0
    for i in range(warmup + repeats):
        start = time.perf_counter()
        images = one_pass()
        if i >= warmup:
            runs.append(images / (time.perf_counter() - start))
    return {"median": statistics.median(runs), "runs": runs, "images": images}


def images_per_second(
    make_batches: Callable[[], Iterable],
    repeats: int = 3,
    warmup: int = 1,
    max_batches: int | None = None,
) -> dict:
    """Runs `make_batches()` to the end `warmup + repeats` times; times each timed pass.

    Returns:
        {"median": images/s, "runs": [images/s, ...], "images": per pass}.
    """

    def one_pass() -> int:
        images = 0
        for k, batch in enumerate(make_batches()):
            if max_batches is not None and k >= max_batches:
                break
            labels = batch[1]
            images += int(labels.shape[0])
            _ = labels.numpy() if hasattr(labels, "numpy") else labels  # wait for the batch
        return images

    return _time_passes(one_pass, repeats, warmup)


def training_throughput(cfg, steps: int, repeats: int = 3) -> dict:
    """Training images/s of the notebook's way, keras `fit` and the project's loop.

    Same model, batch, optimizer and precision for all three; each pass is `steps` steps,
    timed after one warm-up pass (tracing and compilation excluded).
    """
    import keras  # noqa: PLC0415 - TensorFlow-heavy imports only when benchmarking
    import tensorflow as tf  # noqa: PLC0415

    from pipeline import input as inputs_lib  # noqa: PLC0415
    from pipeline import loop, optim, precision, run  # noqa: PLC0415

    strategy, inputs = run.prepare(cfg)
    batch = cfg.data.batch_size
    train = inputs.splits.train

    def fresh_model_and_optimizer():
        model = run.build(cfg, strategy)
        opt = precision.wrap_optimizer(
            optim.make_optimizer(cfg.optim, steps * 10, steps), cfg.train.precision
        )
        return model, opt

    # The notebook: numpy batches, an eager GradientTape step, no tf.function.
    model, opt = fresh_model_and_optimizer()
    x_all = inputs_lib.notebook_preprocess(train, inputs.splits.mean, inputs.splits.std)
    batches = inputs_lib.NotebookIterator(x_all, train.labels, batch, shuffle=True)

    def naive_pass():
        for k, (x, y) in enumerate(batches):
            if k == steps:
                break
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                loss = tf.reduce_mean(optim.cross_entropy(y, logits, cfg.model.num_classes))
                scaled = opt.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
        _ = float(loss)
        return steps * batch

    results = {"naive": _time_passes(naive_pass, repeats)}

    model, opt = fresh_model_and_optimizer()
    if isinstance(model, keras.Model):
        model.compile(optimizer=opt, loss=run.loss_fn(cfg), metrics=["accuracy"])
        fit_data = inputs.train_dataset_fn(0, 10_000)(None).repeat()

        def fit_pass():
            model.fit(fit_data, epochs=1, steps_per_epoch=steps, verbose=0)
            return steps * batch

        results["fit"] = _time_passes(fit_pass, repeats)

    model, opt = fresh_model_and_optimizer()
    train_steps = loop.make_train_step(model, opt, inputs, cfg, strategy)
    iterator = iter(strategy.distribute_datasets_from_function(inputs.train_dataset_fn(0, 10_000)))

    def loop_pass():
        train_steps(iterator, tf.constant(steps)).numpy()
        return steps * batch

    results["loop"] = _time_passes(loop_pass, repeats)
    return results
