"""snakescope.engine.distributed: where a worker stands, and how the workers are started."""

from __future__ import annotations

import sys

import pytest

from snakescope.config import TrainConfig
from snakescope.engine import distributed
from snakescope.engine.checkpoint import run_hash


def test_a_worker_reads_its_place_from_torchrun_or_srun():
    assert distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2"}) is None  # not launched by us
    marker = {distributed.MARKER: "1"}
    assert distributed.from_environment({**marker, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (
        distributed.Group(1, 2, 1))
    srun = {**marker, "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    group = distributed.from_environment(srun)
    assert group == distributed.Group(3, 4, 1) and not group.is_main


def test_torchrun_on_one_machine_srun_in_a_slurm_job(monkeypatch):
    command, env = distributed.launch_command(2, "snakescope.train", ["args.json"], env={"PATH": "/usr/bin"})
    assert command[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert command[4:] == ["--nproc-per-node=2", "-m", "snakescope.train", "args.json"]
    assert env[distributed.MARKER] == "1" and env["PYTHONPATH"].endswith("workflow/scripts")

    monkeypatch.setattr(distributed.shutil, "which", lambda name: f"/usr/bin/{name}")
    allocation = {"tasks": 2}
    monkeypatch.setattr(distributed, "slurm_allocation", lambda env: (allocation["tasks"], ["node07", "node08"]))
    slurm = {"SLURM_JOB_ID": "1234"}  # all Snakemake's job step leaves of the job's SLURM variables
    command, env = distributed.launch_command(2, "snakescope.train", ["args.json"], env=slurm)
    assert command == ["srun", "--ntasks=2", "--kill-on-bad-exit=1", "--export=ALL", sys.executable, "-m",
                       "snakescope.train", "args.json"]
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node07", str(20000 + 1234))
    # a SLURM job with fewer tasks than processes (an interactive single-task allocation): torchrun
    allocation["tasks"] = 1
    command, _ = distributed.launch_command(2, "snakescope.train", [], env=slurm)
    assert "torch.distributed.run" in command


def test_slurm_allocation_from_the_environment_or_scontrol(monkeypatch):
    assert distributed.slurm_allocation({"PATH": "/usr/bin"}) == (0, [])
    calls = []

    def scontrol(command, **kwargs):
        calls.append(command[1:3])
        out = {"job": "JobId=7 JobName=x NumNodes=2 NumCPUs=4 NumTasks=4 NodeList=n[1-2] Partition=gpu",
               "hostnames": "n1\nn2\n"}[command[2]]
        return distributed.subprocess.CompletedProcess(command, 0, stdout=out)

    monkeypatch.setattr(distributed.subprocess, "run", scontrol)
    assert distributed.slurm_allocation({"SLURM_JOB_ID": "7"}) == (4, ["n1", "n2"])
    assert calls == [["show", "job"], ["show", "hostnames"]]


def test_a_run_resumes_whatever_its_process_count():
    settings = dict(task="segmentation", model="unet", seed=0, batch_size=8, epochs=2, patience=2,
                    learning_rate=1e-3, loss="dice", augmentations=("flip",), normalisation="percentile",
                    patch_size=(32, 32), dropout=0.0)
    one, two = TrainConfig(**settings), TrainConfig(**settings, processes=2)
    assert run_hash(one, {"train": ["a"]}, {}) == run_hash(two, {"train": ["a"]}, {})
    assert run_hash(one, {"train": ["a"]}, {}) != run_hash(TrainConfig(**{**settings, "seed": 1}), {"train": ["a"]}, {})


@pytest.mark.parametrize("processes,expected", [(1, 8), (2, 8), (3, 6)])
def test_planned_batch_is_a_multiple_of_the_processes(processes, expected):
    from snakescope.planner import Resources, StepCost, plan_batch_size

    cpu = Resources("cpu", None, None, 2, None)
    assert plan_batch_size("segmentation", StepCost(0.01, None, None), cpu, 1000, processes)[0] == expected
