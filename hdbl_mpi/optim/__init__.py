"""Optimizers, learning-rate schedules and early stopping of the data-parallel study (method §7).

The study compares SGD with momentum and AdamW against the large-batch optimizers LARS and LAMB, with a linear
LR warm-up followed by a step or cosine schedule, and stops a run early when validation accuracy stalls. Every
training mode (parameter server, allreduce baseline, LocalSGD) builds its optimizer and LR through this package,
so a comparison between modes never hides a difference in the update rule.

- ``optim.optimizers``: the optimizers (torch), LARS and LAMB written out with their formulas;
- ``optim.schedules``: the LR at any fractional epoch, and early stopping (pure Python).

The choice lists live here, free of torch, so that the config is checked before torch loads.
"""

OPTIMIZERS = ("sgd", "sgdm", "adamw", "lars", "lamb")  # built by hdbl_mpi.optim.optimizers.make_optimizer
LR_SCHEDULES = ("multistep", "cosine")  # train.lr_schedule; see hdbl_mpi.optim.schedules.scheduled_lr
