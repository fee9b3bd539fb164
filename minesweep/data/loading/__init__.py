"""Stage 4, a store into training batches: samplers choose windows (``sampler``, ``cursor`` for episode-continuous
slots), ``mixture`` weighs several stores, ``datamodule`` reads windows in loader workers and batches them
(``MineDataModule``), ``augment`` runs on the training device."""
