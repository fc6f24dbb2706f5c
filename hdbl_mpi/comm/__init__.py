"""Communication layer: the only package (with ps.server / ps.worker) that touches mpi4py."""
