"""Throughput measurements shared by `cifar-bench`: images per second, medians of repeats."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable

from pipeline.bench.timing import schedule_length, time_in_turn, time_passes


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

    return time_passes(one_pass, repeats, warmup)


# torch_tcmalloc: the twin in a process of its own under tcmalloc (twin_process.py).
CONTENDERS = ("naive", "fit", "loop", "torch", "torch_tcmalloc")
TWINS = ("torch", "torch_tcmalloc")  # the better of the two is the reference
DATA_EPOCHS = 10_000  # more than any benchmark reads: the data never runs out mid-pass


def fresh_model_and_optimizer(cfg, strategy, inputs, steps: int) -> tuple:
    """A newly built model and its optimizer on the benchmark's schedule, under `strategy`."""
    from pipeline.training import optim, run  # noqa: PLC0415 - imports TensorFlow

    model = run.build(cfg, strategy, inputs)
    with strategy.scope():
        return model, optim.build_optimizer(cfg, schedule_length(steps))


def compiled_loop(cfg, strategy, inputs, steps: int) -> tuple:
    """The project's loop as the benchmark and the profiler time it: a fresh model and
    `train_steps(n)` over an endless training iterator."""
    import tensorflow as tf  # noqa: PLC0415 - TensorFlow-heavy imports only when measuring

    from pipeline.training.steps import make_train_step  # noqa: PLC0415

    model, opt = fresh_model_and_optimizer(cfg, strategy, inputs, steps)
    step_fn = make_train_step(model, opt, inputs, cfg, strategy, schedule_length(steps))
    data_fn = inputs.train_dataset_fn(inputs.run_length(DATA_EPOCHS))
    iterator = iter(strategy.distribute_datasets_from_function(data_fn))
    return model, lambda n: step_fn(iterator, tf.constant(n))[0].numpy()


def training_throughput(
    cfg, steps: int, repeats: int = 3, contenders=CONTENDERS, log=print
) -> dict:
    """Training images/s of the notebook's way, keras `fit`, the project's loop and the
    PyTorch twin (`pipeline/bench/torch_twin.py`), plainly in this process ("torch") and
    under tcmalloc in a process of its own ("torch_tcmalloc", `twin_process.py`).

    Same model, batch, optimizer and precision for all; each pass is `steps` steps. Every
    contender is built first, then their passes are timed in turn (`timing.time_in_turn`:
    a warm-up round, tracing and compilation included, then `repeats` timed rounds), so a
    machine whose speed drifts slows them alike. A contender that cannot run here (torch
    or tcmalloc not installed, `fit` for a tf.Module) is left out with a note in "skipped".
    `cfg.train.precision` must be resolved (not "auto").
    """
    import keras  # noqa: PLC0415 - TensorFlow-heavy imports only when benchmarking
    import tensorflow as tf  # noqa: PLC0415

    from pipeline.bench import baselines, torch_twin, twin_process  # noqa: PLC0415
    from pipeline.data import sources  # noqa: PLC0415
    from pipeline.training import keras_fit, optim, run  # noqa: PLC0415

    strategy, inputs = run.prepare(cfg)
    batch = cfg.data.batch_size
    train = inputs.splits.train
    passes, parameters, skipped = {}, {}, {}
    closing = contextlib.ExitStack()

    @functools.cache  # the training split as float32 (600 MB): made once, for naive and torch
    def normalised_images():
        return sources.normalised(train.images, inputs.splits.mean, inputs.splits.std)

    if "naive" in contenders:
        # The notebook: numpy batches, an eager GradientTape step, no tf.function.
        model, opt = fresh_model_and_optimizer(cfg, strategy, inputs, steps)
        batches = baselines.NotebookIterator(
            normalised_images(), train.labels, batch, shuffle=True, seed=0
        )

        def naive_pass(model=model, opt=opt):
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

        passes["naive"] = naive_pass

    if "fit" in contenders:
        model, opt = fresh_model_and_optimizer(cfg, strategy, inputs, steps)
        if isinstance(model, keras.Model):
            model.compile(optimizer=opt, loss=keras_fit.loss_fn(cfg), metrics=["accuracy"])
            fit_data = inputs.train_dataset_fn(inputs.run_length(DATA_EPOCHS))(None)

            def fit_pass(model=model):
                model.fit(fit_data, epochs=1, steps_per_epoch=steps, verbose=0)
                return steps * batch

            passes["fit"] = fit_pass
        else:
            skipped["fit"] = f"{cfg.model.name} is a tf.Module, not a keras.Model"

    if "loop" in contenders:
        model, train_steps = compiled_loop(cfg, strategy, inputs, steps)

        def loop_pass():
            train_steps(steps)
            return steps * batch

        passes["loop"] = loop_pass
        parameters["loop"] = run.count_params(model)

    twin_missing = _twin_unavailable(cfg)
    if "torch" in contenders:
        if twin_missing:
            skipped["torch"] = twin_missing
        else:
            passes["torch"], parameters["torch"] = torch_twin.training_pass(
                cfg, normalised_images(), train.labels, steps
            )
    if "torch_tcmalloc" in contenders:
        tcmalloc = twin_process.find_tcmalloc()
        if twin_missing or tcmalloc is None:
            skipped["torch_tcmalloc"] = (
                twin_missing or f"tcmalloc is not installed: {twin_process.TCMALLOC_HINT}"
            )
        else:
            twin = closing.enter_context(
                twin_process.TwinProcess(cfg, normalised_images(), train.labels, steps, tcmalloc)
            )
            passes["torch_tcmalloc"] = twin.one_pass
            parameters["torch_tcmalloc"] = twin.trainable_parameters
    if passes:
        log(f"timing {', '.join(passes)} in turn: a warm-up round, then {repeats} rounds")
    with closing:  # ends the tcmalloc twin's process
        results = time_in_turn(passes, repeats)
    for name, r in results.items():
        log(
            f"{name:14s} {r['median']:>9,.0f} images/s  (runs: "
            + ", ".join(f"{v:,.0f}" for v in r["runs"])
            + ")"
        )
        if name in parameters:
            r["trainable_parameters"] = parameters[name]
    for name, why in skipped.items():
        log(f"{name:14s} skipped: {why}")
    return {"results": results, "skipped": skipped}


def _twin_unavailable(cfg) -> str | None:
    """Why the PyTorch twin cannot run for `cfg` here, or None."""
    from pipeline.bench import torch_twin  # noqa: PLC0415

    if not torch_twin.available():
        return "torch is not installed: pip install -e '.[compare]'"
    if cfg.model.name != "custom_convnet":
        return f"the PyTorch twin reproduces custom_convnet, not {cfg.model.name}"
    return None


def input_pipelines(cfg, repeats: int, log=print) -> dict:
    """images/s of the notebook's numpy iterator, a per-element tf.data pipeline and the
    project's vectorised one, on `cfg` (a DataConfig: its batch and augmentation), side by
    side; each contender is built once and read one epoch per pass, as training reads it."""
    import itertools  # noqa: PLC0415

    from pipeline.bench import baselines  # noqa: PLC0415 - imports TensorFlow
    from pipeline.data import datasets, sources  # noqa: PLC0415

    splits = sources.load_splits(cfg)
    train = splits.train
    inputs = datasets.make_inputs(splits, cfg, seed=0)
    x = sources.normalised(train.images, splits.mean, splits.std)
    notebook = baselines.NotebookIterator(x, train.labels, cfg.batch_size, shuffle=True, seed=0)
    per_element = baselines.per_element_dataset(train, splits, cfg.batch_size, 0)
    length = inputs.run_length(repeats + 1)
    epochs = iter(datasets.train_dataset(inputs, length))
    contenders = {
        "notebook_iterator": lambda: notebook,
        "per_element": lambda: per_element,
        "pipeline": lambda: itertools.islice(epochs, length.steps_per_epoch),
    }
    results = {}
    for name, make in contenders.items():
        r = images_per_second(make, repeats=repeats)
        results[name] = r
        runs = ", ".join(f"{v:,.0f}" for v in r["runs"])
        log(f"{name:18s} {r['median']:>10,.0f} images/s  (runs: {runs})")
    ratio = results["pipeline"]["median"] / results["per_element"]["median"]
    log(f"pipeline / per_element = {ratio:.1f}x")
    return {
        **{k: v["median"] for k, v in results.items()},
        "runs": {k: v["runs"] for k, v in results.items()},
        "pipeline_over_per_element": ratio,
        "settings": {
            "batch_size": cfg.batch_size,
            "images": len(train.labels),
            "augment": "shift 4 px zero-padded + random flip (all three but the "
            "notebook iterator, which does none)",
            "source": cfg.source,
            "repeats": repeats,
        },
    }
