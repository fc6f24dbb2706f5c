"""Profiles of the step-time model tau(B) = a*B + b and of B_max (method §4).

- ``profiling.measure``: timing real training steps and peak memory on a device (torch);
- ``profiling.store``: profile files, looking entries up and averaging ranks (no torch, no MPI), so that
  `hdbl plan --profile` and the set-up of a run read a profile instantly.
"""
