"""`hdbl sweep`: a grid of runs over seeds, then the comparison (method §7 asks for it; the papers' tables are it).

    hdbl sweep configs/demo.yaml --grid dual.small=0,2,4 --grid dual.commits_per_epoch=1,4,16 \\
        --grid ps.mode=asp,allreduce --seeds 3 --out runs/sweep

Every combination of the grids' values is one configuration, run once per seed (train.seed = 0 .. N-1) as a
real `hdbl launch train` job with the right rank count for its mode, in --out/runs/NAME. A combination the
config refuses (say, dual.small=2 with ps.mode=allreduce, which has no server) is listed as skipped with the
reason. Runs whose summary.json exists are not repeated, so an interrupted sweep continues where it stopped.
On a workstation the runs go one after another; with --slurm they become one SLURM job array (one task per
run, which runs the package's batch script hdbl.sbatch: hdbl_mpi/launch/slurm_array.py) and a dependent job that
writes the report.

The sweep ends with --out/results.csv (one row per run), results.json, report.md (`hdbl report`'s comparison,
with mean ± std over seeds first) and plot.png (`hdbl plot` of the best run of each mode). Presets run the
papers' experiments: ``--preset paper-cifar100`` / ``paper-imagenet`` (the t × n_S grid, the factor ablation,
conference vs journal merge, cyclic only, the all-large-batch baseline).
"""

from hdbl_mpi.sweep.command import add_arguments, sweep

__all__ = ["add_arguments", "sweep"]
