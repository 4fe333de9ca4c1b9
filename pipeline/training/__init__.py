"""From a Config and data to a trained model: the compiled steps (`steps`), the `Trainer`
(`trainer`), the one loop (`controller`) and everything it does besides steps (`actions`),
`fit` (`loop`), the run's folder (`run_dir`), optimizer and schedule (`optim`),
precision, Keras's `model.fit` for comparison (`keras_fit`), the SavedModel export
(`export`) and one run end to end (`run`)."""
