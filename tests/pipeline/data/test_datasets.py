import numpy as np
import pytest
import tensorflow as tf

from pipeline.bench import baselines
from pipeline.config import AugmentConfig, DataConfig
from pipeline.data import datasets


def _inputs(splits, **kw):
    cfg = DataConfig(source="synthetic", batch_size=kw.pop("batch_size", 64), **kw)
    return datasets.make_inputs(splits, cfg, seed=kw.pop("seed", 0))


def _epoch(inputs, epoch=0, ctx=None):
    ds = inputs.train_dataset_fn(inputs.run_length(epoch + 1), epoch)(ctx)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_train_batches_shapes_dtypes_and_drop_remainder(synthetic_splits):
    inputs = _inputs(synthetic_splits, batch_size=100)
    batches = _epoch(inputs)
    assert (
        inputs.run_length(1).steps_per_epoch == 5 and len(batches) == 5
    )  # 512 // 100, remainder dropped
    x, y = batches[0]
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (100,) and y.dtype == np.int32


def test_each_epoch_is_a_fresh_permutation(synthetic_splits):
    inputs = _inputs(synthetic_splits, batch_size=128)
    seen = []
    for epoch in (0, 1):
        labels = np.concatenate([y for _, y in _epoch(inputs, epoch)])
        seen.append(labels)
        assert np.array_equal(np.sort(labels), np.sort(synthetic_splits.train.labels))
    assert not np.array_equal(seen[0], seen[1])


def test_normalised_with_training_statistics(synthetic_splits):
    x = np.concatenate([x for x, _ in _epoch(_inputs(synthetic_splits, batch_size=128))])
    assert np.allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-3)
    assert np.allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-3)


def test_same_seed_same_batches_and_resume_sees_the_same_epoch(synthetic_splits):
    aug = AugmentConfig(translate=4, flip="random", cutout=4)
    a = _inputs(synthetic_splits, augment=aug)
    b = _inputs(synthetic_splits, augment=aug)
    first = list(a.train_dataset_fn(a.run_length(3))())
    again = list(b.train_dataset_fn(b.run_length(3), 2)())  # a run resumed at epoch 2
    steps = a.run_length(3).steps_per_epoch
    assert len(again) == steps and len(first) == 3 * steps
    for (x1, y1), (x2, y2) in zip(first[2 * steps :], again, strict=True):
        assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())
    c = datasets.make_inputs(synthetic_splits, a.cfg, seed=1)
    assert not np.array_equal(_epoch(c)[0][1], _epoch(a)[0][1])


def test_replica_batches_concatenate_to_the_global_batch(synthetic_splits):
    inputs = _inputs(synthetic_splits, batch_size=64)
    whole = _epoch(inputs)
    ctx = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
    )
    halves = _epoch(inputs, ctx=ctx)
    assert len(halves) == 2 * len(whole)
    for k, (_x, y) in enumerate(whole):
        assert np.array_equal(np.concatenate([halves[2 * k][1], halves[2 * k + 1][1]]), y)
    # Two workers, one replica each: worker p gets the p-th half of each global batch.
    worker1 = _epoch(inputs, ctx=tf.distribute.InputContext(2, 1, 2))
    assert np.array_equal(worker1[0][1], whole[0][1][32:])


def test_batch_must_divide_by_replicas(synthetic_splits):
    inputs = _inputs(synthetic_splits, batch_size=63)
    ctx = tf.distribute.InputContext(1, 0, 2)
    with pytest.raises(datasets.InputError, match="must divide by the 2 replicas: use 62 or 64"):
        inputs.train_dataset_fn(inputs.run_length(1))(ctx)


def test_device_preprocess_matches_pipeline(synthetic_splits):
    aug = AugmentConfig(translate=3, flip="random")
    host = _epoch(_inputs(synthetic_splits, augment=aug))
    device = _inputs(synthetic_splits, augment=aug, augment_on_device=True)
    (images, keys), labels = next(iter(device.train_dataset_fn(device.run_length(1))()))
    assert images.dtype == tf.uint8
    np.testing.assert_allclose(
        device.device_preprocess(images, keys).numpy(), host[0][0], atol=1e-5
    )
    assert np.array_equal(labels.numpy(), host[0][1])


def test_eval_dataset_keeps_every_example_in_order(synthetic_splits):
    inputs = _inputs(synthetic_splits, eval_batch_size=100)
    labels = np.concatenate([y.numpy() for _, y in inputs.eval_dataset("val")])
    assert np.array_equal(labels, synthetic_splits.val.labels)


def test_batch_larger_than_data_is_rejected(synthetic_splits):
    with pytest.raises(datasets.InputError, match="lower --batch-size"):
        _inputs(synthetic_splits, batch_size=10_000)


def test_notebook_iterator_and_per_element_pipeline(synthetic_splits):
    train = synthetic_splits.train
    it = baselines.NotebookIterator(train.images, train.labels, 100, shuffle=True)
    sizes = [len(y) for _, y in it]
    assert sizes == [100] * 5 + [12]
    per_element = baselines.per_element_dataset(train, synthetic_splits, 64, seed=0)
    x, y = next(iter(per_element))
    assert x.shape == (64, 32, 32, 3) and x.dtype == tf.float32


def test_a_cut_epoch_is_the_first_batches_of_its_full_epoch(synthetic_splits):
    # Run length is decided once: the dataset emits exactly the steps the loop trains, so
    # epoch 2 of a cut run starts at epoch 2's order, as a resumed run's does.
    inputs = _inputs(synthetic_splits, batch_size=64)
    full = list(inputs.train_dataset_fn(inputs.run_length(3))())
    cut = list(inputs.train_dataset_fn(inputs.run_length(3, cut=3))())
    resumed = list(inputs.train_dataset_fn(inputs.run_length(3, cut=3), 2)())
    assert len(full) == 3 * 8 and len(cut) == 3 * 3 and len(resumed) == 3
    for epoch in range(3):
        for k in range(3):
            np.testing.assert_array_equal(cut[3 * epoch + k][1], full[8 * epoch + k][1])
    for (x1, y1), (x2, y2) in zip(cut[6:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
