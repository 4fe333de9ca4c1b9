"""Architecture search with keras-tuner at equal training compute, through the project's
one loop: the spaces (`space`), the HyperModel (`hypermodel`), the search with resume and
keras-tuner's chief/worker distribution (`search`), its local chief and workers
(`local`), the winner against the hand recipe (`retrain`), and the report (`report`,
`frontier`)."""

TUNERS = ("hyperband", "bayesian", "random")  # the keras-tuner tuners `cifar-tune` offers
