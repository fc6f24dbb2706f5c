"""Baselines run by the same trainer: synchronous allreduce SGD and LocalSGD (no parameter server; method §7).

Their mode and backend names, and the rule that picks a backend, are pure and live in hdbl_mpi/rules/backends.py,
so that a config is checked before torch or MPI loads.
"""
