"""Can a lost worker be replaced under the MPI we ship? The small reproducer for issue 27's choice.

    python bench/respawn_probe.py            # 4 ranks under mpirun with hdbl's ULFM flags, on this host

It starts itself under the venv's mpirun with the flags `hdbl launch` uses for `ps.fault_tolerance: ulfm`
(hdbl_mpi.launch.commands.ulfm_args). Rank 2 SIGKILLs itself after a second; rank 0, like the server, waits
until ULFM reports the failure (Ack_failed / Get_failed), then spawns one new Python process
(MPI_Comm_spawn from COMM_SELF), sends it a role, gets its reply and merges the intercommunicator. It prints the
seconds each step took, or the error that stopped it, and exits 0 only if the replacement answered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DETECTOR_TIMEOUT_S = 4.0


def child() -> None:
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    role = parent.recv(source=0, tag=7)
    parent.send({"pid": os.getpid(), "host": MPI.Get_processor_name(), "role": role}, dest=0, tag=8)
    parent.Merge(high=True)
    sys.stdout.flush()
    os._exit(0)  # under ULFM a rank leaves without MPI_Finalize (hdbl_mpi.comm.ulfm)


def parent() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    if comm.rank == 2:
        time.sleep(1.0)
        os.kill(os.getpid(), 9)
    if comm.rank != 0:
        time.sleep(3 * DETECTOR_TIMEOUT_S)
        os._exit(0)
    start = time.perf_counter()
    while not comm.Get_failed().size:
        comm.Ack_failed()
        time.sleep(0.1)
    print(f"respawn_probe: rank 0 saw {comm.Get_failed().size} failed rank(s) after "
          f"{time.perf_counter() - start:.2f} s", flush=True)
    start = time.perf_counter()
    try:
        inter = MPI.COMM_SELF.Spawn(sys.executable, [__file__, "--child"], maxprocs=1)
        inter.send("worker 2", dest=0, tag=7)
        reply = inter.recv(source=0, tag=8)
        spawned = time.perf_counter() - start
        merged = inter.Merge(high=False)
        print(f"respawn_probe: spawned and answered in {spawned:.2f} s ({reply}); merged communicator of "
              f"{merged.size} in {time.perf_counter() - start - spawned:.3f} s more", flush=True)
        code = 0
    except MPI.Exception as err:
        print(f"respawn_probe: spawn failed after {time.perf_counter() - start:.2f} s: {err}", flush=True)
        code = 1
    sys.stdout.flush()
    os._exit(code)


def main() -> int:
    if "--child" in sys.argv:
        child()
    if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_RANK" in os.environ:
        return parent()
    from hdbl_mpi.launch.commands import local_mpirun, ulfm_args

    argv, env = local_mpirun(4, [sys.executable, __file__], ulfm_args(DETECTOR_TIMEOUT_S))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("respawn_probe:")]
    print("\n".join(lines) or proc.stdout + proc.stderr)
    return 0 if any("answered" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
