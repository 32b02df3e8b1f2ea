"""distributed: data-parallel training over several processes (torch.distributed), started by torchrun
on one machine and by srun under SLURM.

One process per GPU (or, on CPUs, per share of the cores), each holding a full copy of the network
(DistributedDataParallel): every process takes its slice of each global batch, gradients are averaged
over the processes after backward (NCCL between GPUs, gloo on CPUs), so one step equals a step on the
whole global batch. The rendezvous is the standard one (MASTER_ADDR and MASTER_PORT): torchrun sets it on
one machine; under SLURM the launcher takes the first node of the allocation and a port derived from the
job id, and srun starts the tasks on every node (multi-node runs included).

A worker knows its place from the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or srun's
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID in a step that `launch` started (SNAKESCOPE_DISTRIBUTED marks
it, so a plain SLURM batch job is not mistaken for a worker).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "SNAKESCOPE_DISTRIBUTED"  # set by `launch` in the workers' environment


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, history, the model and its card, and logs progress."""
        return self.rank == 0


SINGLE = Group(0, 1, 0)


def from_environment(env=None) -> Group | None:
    """The group this process belongs to when a launcher started it as a worker; None otherwise."""
    env = os.environ if env is None else env
    if MARKER not in env:
        return None
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun
        return Group(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    return Group(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))


def setup(group: Group, cuda: bool) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs); the rendezvous comes from the environment."""
    import torch
    import torch.distributed as dist

    os.environ.setdefault("RANK", str(group.rank))
    os.environ.setdefault("WORLD_SIZE", str(group.world))
    os.environ.setdefault("LOCAL_RANK", str(group.local_rank))
    if cuda:
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("process %d of %d joined (%s, master %s:%s)", group.rank, group.world, "nccl" if cuda else "gloo",
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(values: list[float], group: Group) -> list[float]:
    """Element-wise sums of `values` over every process (in float64); `values` itself in one process."""
    if group.world == 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def barrier(group: Group) -> None:
    if group.world > 1:
        import torch.distributed as dist

        dist.barrier()


def slurm_allocation(env=None) -> tuple[int, list[str]]:
    """(tasks, host names) of the SLURM job this process runs in; (0, []) outside SLURM.

    Snakemake's SLURM job step keeps only the job's id of its SLURM_* variables, so the tasks and nodes
    are asked from scontrol when the variables are gone.
    """
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return 0, []
    tasks, nodes = env.get("SLURM_NTASKS"), env.get("SLURM_JOB_NODELIST")
    if tasks is None or nodes is None:
        try:
            job = subprocess.run(["scontrol", "show", "job", "--oneliner", env["SLURM_JOB_ID"]], capture_output=True,
                                 text=True, check=True, env=env).stdout
        except (OSError, subprocess.CalledProcessError):
            return 0, []
        fields = dict(item.split("=", 1) for item in job.split() if "=" in item)
        tasks, nodes = fields.get("NumTasks", "0"), fields.get("NodeList", "")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True, env=env).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        hosts = [nodes] if nodes else []
    return int(tasks) if str(tasks).isdigit() else 0, hosts


def launch_command(processes: int, module: str, arguments: list[str], env=None) -> tuple[list[str], dict]:
    """The command and environment that start `processes` workers running `python -m module arguments`.

    Under SLURM with at least `processes` tasks: srun, one task per worker, on every node of the
    allocation; elsewhere torchrun on this machine (`--standalone`: it picks a free port).
    """
    env = dict(os.environ if env is None else env)
    env[MARKER] = "1"
    # the workers import this package as the rule's script does
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    worker = [sys.executable, "-m", module, *arguments]
    tasks, hosts = slurm_allocation(env)
    if tasks >= processes and shutil.which("srun"):
        env["MASTER_ADDR"] = hosts[0] if hosts else "localhost"
        env["MASTER_PORT"] = str(20000 + int(env["SLURM_JOB_ID"]) % 20000)  # the same on every node
        command = ["srun", f"--ntasks={processes}", "--kill-on-bad-exit=1", "--export=ALL", *worker]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", module, *arguments]
    return command, env


def launch(processes: int, module: str, arguments: list[str]) -> None:
    """Run the workers and wait for them; their output goes where this process's stderr goes (the rule's
    log). A SIGTERM to this process (Snakemake stopping, a time limit) is passed on to them.

    Raises:
        RuntimeError when a worker fails.
    """
    command, env = launch_command(processes, module, arguments)
    log.info("starting %d training processes: %s", processes, " ".join(command))
    sys.stderr.flush()
    child = subprocess.Popen(command, env=env, stdout=sys.stderr, stderr=subprocess.STDOUT,
                             start_new_session=False)

    def forward(signum, frame):
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        returncode = child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if returncode != 0:
        raise RuntimeError(f"{processes} training processes ({command[0]}) ended with exit code {returncode}; "
                           "their messages are above in this log.")
