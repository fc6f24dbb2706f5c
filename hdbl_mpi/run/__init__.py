"""The run directory (the contract between training and everything after it) and terminal progress."""
