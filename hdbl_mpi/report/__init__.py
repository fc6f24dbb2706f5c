"""Reading run directories back: comparison tables (tables.py) and plots (plots.py). No MPI, no torch."""
