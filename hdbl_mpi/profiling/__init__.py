"""Profiles of the step-time model tau(B) = a*B + b and of B_max (method §4), one room per job:

- ``entry``: the typed profile entry (and its memory fit, samples, input share), torch-free;
- ``store``: profile files, looking entries up and averaging ranks (no torch, no MPI), so that `hdbl plan
  --profile` and the set-up of a run read a profile instantly;
- ``fit``: the line fits; ``step``: the timed training step; ``memory``: peak memory and capacity; ``bmax``: B_max
  predicted and confirmed;
- ``measure``: profiling a device, resolution by resolution, from those parts; ``trained``: the settings of the
  step a config trains; ``command``: `hdbl profile`.
The profile's plot is drawn by hdbl_mpi/report/plots.py.
"""
