"""From a Config and data to a trained model: the compiled steps (`steps`), the `Trainer`
and the `fit` controller (`loop`), the run's folder (`run_dir`), optimizer and schedule
(`optim`), precision, strategy, local workers (`launch`), Keras's `model.fit` for
comparison (`keras_fit`), the SavedModel export (`export`) and one run end to end (`run`)."""
