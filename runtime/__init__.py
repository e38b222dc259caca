"""dslc's runtime: kernels, execution plans, optimizers, data, checkpoints, training."""
