"""hdbl-mpi: hybrid dual-batch and cyclic progressive learning on an MPI parameter server."""

__version__ = "0.1.0"
