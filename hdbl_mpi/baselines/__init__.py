"""Baselines run by the same trainer: synchronous allreduce SGD and LocalSGD (no parameter server; method §7).

The names live here, free of torch and MPI, so that the config is checked before either loads.
"""

PEER_MODES = ("allreduce", "localsgd")  # ps.mode values where every rank is a worker and there is no server
BACKENDS = ("mpi4py", "horovod", "ddp")  # ps.backend of the allreduce baseline (besides auto)
