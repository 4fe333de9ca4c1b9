"""From bytes on disk to batches: CIFAR-10 sources (`sources`, `cifar_files`), tf.data
datasets (`datasets`) and batched augmentation (`augment`). Never imports models or
training."""
