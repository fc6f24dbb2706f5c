"""Baselines run by the same trainer: synchronous allreduce SGD and LocalSGD (no parameter server)."""
