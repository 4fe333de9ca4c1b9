"""Architecture search with keras-tuner, through the project's one loop: the HyperModel
(`hypermodel`), the search with resume and keras-tuner's chief/worker distribution
(`search`), its local chief and workers (`local`), and the report (`report`)."""

TUNERS = ("hyperband", "bayesian", "random")  # the keras-tuner tuners `cifar-tune` offers
