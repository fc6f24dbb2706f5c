"""Data: in-memory sets (IDX, CIFAR, synthetic) and image folders, and the batches training draws from them.

A face that hands names on; the code lives in the modules named here: loading.py (find and load a set),
batches.py (batches from it), sources.py (what a trainer draws from), folder.py, dali.py, images.py (image
folders). The facts about each data set are in hdbl_mpi/datasets.py.
"""

from hdbl_mpi.data.batches import eval_batches, make_batch
from hdbl_mpi.data.loading import DEFAULT_DATA_DIR, ArrayDataset, find_dataset, load_dataset
from hdbl_mpi.datasets import DATASET_NAMES, canonical_name

__all__ = ["DATASET_NAMES", "DEFAULT_DATA_DIR", "ArrayDataset", "canonical_name", "eval_batches", "find_dataset",
           "load_dataset", "make_batch"]
