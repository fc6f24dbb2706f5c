"""Building launcher command lines (mpirun now; horovodrun and srun come with `hdbl launch`)."""
