"""A set stop flag ends a training call before its next step; checkpoints inside epochs."""

import numpy as np
import tensorflow as tf

from pipeline.training import run, steps, trainer
from tests.conftest import tiny_config
from tests.processes import checkpoint_steps


def test_a_set_stop_flag_ends_the_call_before_its_next_step():
    cfg = tiny_config()
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    length = inputs.run_length(1)
    flag = tf.Variable(False)
    fitted = trainer.Trainer(model, inputs, cfg, strategy, length, flag)
    data = iter(strategy.distribute_datasets_from_function(inputs.train_dataset_fn(length)))
    assert fitted.train(3, data) == 3
    flag.assign(True)
    before = [v.numpy() for v in model.trainable_variables]
    assert fitted.train(3, data) == 0
    for a, b in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    assert fitted.steps_recorded == 3 and int(fitted.optimizer.iterations) == 3
    assert not steps.agreed_flag(None, strategy)()


def test_checkpoint_every_steps_saves_inside_epochs(tmp_path):
    cfg = tiny_config(
        **{
            "train.epochs": 2,
            "train.out_dir": str(tmp_path),
            "train.checkpoint_every_steps": 3,
            "train.keep_checkpoints": 10,
        }
    )
    run.train(cfg, log=lambda s: None)
    # 8 steps per epoch: saves at 3 and 6 inside each epoch, and at each epoch's end.
    assert checkpoint_steps(tmp_path) == [3, 6, 8, 11, 14, 16]
