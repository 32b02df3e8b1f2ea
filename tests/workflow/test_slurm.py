"""The real workflow on a real SLURM cluster: the single-node cluster of tests/cluster/slurm.sh.

One snakemake run through `--profile profiles/slurm` (3.5 to 5.5 min measured on 2 busy shared cores,
plus 1.5 min for the local run; see README.md) does everything this module checks:

* a small real dataset (WBC, Zheng 2018, Dataset 2: 100 images, 32x32, mobilenet_v2, 4 short epochs)
  goes through every rule, each as its own sbatch job: recommend, train, predict and uncertainty in partition
  `gpu` with a GPU allocated, convert, split, augment and evaluate in partition `cpu`;
* the train job is cancelled (`scancel`) once its resume checkpoint holds a finished epoch; the
  train rule's `retries` resubmit it and it resumes from that checkpoint, not from epoch 0;
* a second dataset with a truncated TIFF fails in convert once, with the message on snakemake's
  output (--show-failed-logs), and is not resubmitted (only train has retries);
* the results equal those of a local run (`--cores 2`) with the same seed: the resumed SLURM training
  ends exactly where an uninterrupted local one does (CPU determinism);
* a third dataset trains a U-Net in two data-parallel processes (`train_processes: 2`, gloo on the
  CPU): the train job asks SLURM for 2 tasks and starts them with srun; it too is cancelled after an
  epoch and resumes without repeating one.

A second run goes through `--profile profiles/slurm-drmaa` (snakemake-executor-plugin-drmaa), with the
SLURM DRMAA library built from ../shared/vendor/slurm-drmaa by `tests/cluster/slurm.sh drmaa`: GPU rules
to the GPU partition, the bad input failing once, training results equal to the local run's (the run
stops after training: the jobs after it are the same rules on the same executor).

Runs where SLURM can be run: CI=true (then as root; slurm.sh installs slurm-wlm + munge with apt if
missing), or `sbatch` on PATH and running as root. Skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import PROJECT, SNAKEFILE, read_metrics, run_snakemake, wbc_dataset, write_config
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM_SH = PROJECT / "tests" / "cluster" / "slurm.sh"
STATE_DIR = Path(os.environ.get("SNAKESCOPE_SLURM_DIR", "/tmp/snakescope-slurm"))
RUN_TIMEOUT_S = 1500  # the whole SLURM run; 3.5 to 5.5 min measured on 2 busy shared cores
EPOCHS = 4
DDP_EPOCHS = 6  # of under a second each: the window to cancel the job between two epochs
GPU_RULES = {"recommend", "train", "predict", "uncertainty"}
CPU_RULES = {"convert", "split", "augment", "evaluate"}


def slurm_env() -> dict:
    return {
        **os.environ,
        "SLURM_CONF": str(STATE_DIR / "etc" / "slurm.conf"),
        "PYTHONPATH": str(PROJECT / "workflow" / "scripts"),
    }


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local test cluster, started here unless it already runs; stopped again only if started here."""
    on_ci = os.environ.get("CI") == "true"
    is_root = os.geteuid() == 0
    if not on_ci and not (shutil.which("sbatch") and is_root):
        pytest.skip("SLURM test cluster: needs CI=true, or sbatch on PATH and root")
    if not is_root:
        pytest.fail("CI=true: the SLURM test must run as root (tests/cluster/slurm.sh starts daemons)")
    running = (
        subprocess.run(["bash", str(SLURM_SH), "status"], capture_output=True, text=True).returncode == 0
    )
    if not running:
        started = subprocess.run(["bash", str(SLURM_SH), "start"], capture_output=True, text=True)
        assert started.returncode == 0, f"slurm.sh start failed:\n{started.stdout}\n{started.stderr}"
    yield slurm_env()
    if not running:
        subprocess.run(["bash", str(SLURM_SH), "stop"], capture_output=True, text=True)


def write_truncated_tiff_dataset(folder: Path, source: Path) -> Path:
    """Six ISBI 2012 crops as TIFF (image/ + groundtruth/), one image cut short as by a failed copy."""
    for name in sorted(p.name for p in (source / "train" / "image").glob("*.png"))[:6]:
        stem = Path(name).stem
        for sub, src in (("image", "image"), ("groundtruth", "label")):
            pixels = np.asarray(Image.open(source / "train" / src / name))[:64, :64]
            (folder / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / sub / f"{stem}.tif", pixels)
    broken = sorted((folder / "image").glob("*.tif"))[1]
    broken.write_bytes(broken.read_bytes()[:1000])
    return broken


def write_crops(folder: Path, source: Path, n: int = 24, size: int = 128) -> Path:
    """`n` ISBI 2012 crops with their membrane masks as TIFF (image/ + groundtruth/)."""
    names = sorted(p.name for p in (source / "train" / "image").glob("*.png"))
    for index in range(n):  # four crops down each of the first slices
        name = names[index // 4]
        for sub, src in (("image", "image"), ("groundtruth", "label")):
            pixels = np.asarray(Image.open(source / "train" / src / name))[size * (index % 4):][:size, :size]
            (folder / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / sub / f"{index:02d}.tif", pixels)
    return folder


def distributed_config(data_dir: Path) -> dict:
    """Two data-parallel training processes on the CPU (gloo), each with one CPU of the node."""
    return {
        # 4 patches of 64 px per 128 px crop: 16 steps of 4 per epoch, about a second, long enough to cancel
        "task": "segmentation", "data_dir": str(data_dir), "models": ["unet_small"], "patch_size": [64, 64],
        "train_processes": 2, "device": "cpu", "batch_size": 4, "epochs": DDP_EPOCHS, "patience": DDP_EPOCHS,
        "dropout": 0.0, "evaluate": False, "uncertainty": False, "export": False,
    }


def dataset_config(shared_data: Path) -> dict:
    return wbc_dataset(
        shared_data, part=2, resize=[32, 32], models=["mobilenet_v2"], batch_size=8, epochs=EPOCHS,
        patience=EPOCHS,
        # enough batches that an epoch lasts a few seconds, so the job can be killed between epochs
        max_batches_per_epoch=3, mc_samples=3, export=False,
    )


def checkpoint_epoch(path: Path) -> int | None:
    """The last finished epoch recorded in a resume checkpoint, or None while there is none."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


def log_context(log: Path) -> list[dict]:
    """The `running on k=v ...` records of a rule's log (snakescope.logs), one per attempt."""
    records = []
    for line in log.read_text().splitlines():
        if "snakescope.logs: running on " in line:
            fields = line.split("running on ", 1)[1].split()
            records.append(dict(field.split("=", 1) for field in fields if "=" in field))
    return records


def squeue_jobs(env: dict, run_id: str) -> list[dict]:
    """Every job of one snakemake run (the plugin names jobs after the run id), finished ones included."""
    out = subprocess.run(
        [
            "squeue",
            "--states=all",
            "--noheader",
            f"--name={run_id}",
            "--Format=JobID:12|,Partition:12|,Comment:100|,State:16|,tres-per-job:40|,NumTasks:6|",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        if line.strip():
            job_id, partition, comment, state, gres, tasks = (f.strip() for f in line.split("|")[:6])
            rule = re.match(r"rule_([A-Za-z0-9]+?)(?:_wildcards_(.*))?$", comment)
            jobs.append(
                {
                    "id": job_id,
                    "partition": partition,
                    "rule": rule.group(1),
                    "wildcards": rule.group(2),
                    "state": state,
                    "gres": gres,
                    "tasks": int(tasks),
                }
            )
    return jobs


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, shared_data, tmp_path_factory):
    """The SLURM run, with the train job cancelled once mid-way, and a local run of the same settings."""
    env = slurm_cluster
    root = tmp_path_factory.mktemp("slurm")
    broken_file = write_truncated_tiff_dataset(root / "broken", shared_data / "isbi2012_em_membranes")
    common = {"seed": 0, "augmentations": ["flip"]}
    crops = write_crops(root / "crops", shared_data / "isbi2012_em_membranes")
    config = {
        "datasets": {
            "wbc": dataset_config(shared_data),
            "broken": {"task": "segmentation", "data_dir": str(root / "broken"), "patch_size": [32, 32]},
            "ddp": distributed_config(crops),
        },
        **common,
    }
    workdir = root / "slurm"
    config_path = write_config(workdir, config)
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        "--profile",
        str(PROJECT / "profiles" / "slurm"),
        # the test cluster has no accounting: poll job states with squeue (tests/cluster/README.md)
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--max-threads",
        "2",
        "--latency-wait",
        "5",
        # the broken dataset fails; the good one goes on
        "--keep-going",
    ]
    trainings = {"wbc": ("wbc/mobilenet_v2/seed0", EPOCHS), "ddp": ("ddp/unet_small/seed0", DDP_EPOCHS)}
    output_path = root / "snakemake.out"
    started = time.monotonic()
    cancelled = dict.fromkeys(trainings)
    with open(output_path, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            while process.poll() is None:
                if time.monotonic() - started > RUN_TIMEOUT_S:
                    raise AssertionError(f"SLURM run exceeded {RUN_TIMEOUT_S} s")
                for dataset, (run, epochs) in trainings.items():
                    train_log = workdir / f"logs/{run}/train.log"
                    if cancelled[dataset] is None and train_log.is_file():
                        epoch = checkpoint_epoch(workdir / f"results/{run}/train/checkpoint_last.pt")
                        if epoch is not None and 1 <= epoch < epochs:
                            job_id = log_context(train_log)[-1]["SLURM_JOB_ID"]
                            subprocess.run(["scancel", job_id], env=env, check=True)
                            cancelled[dataset] = {"job_id": job_id, "epoch": epoch}
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.terminate()  # snakemake cancels its SLURM jobs on SIGTERM
                process.wait(60)
    slurm_seconds = time.monotonic() - started
    output = output_path.read_text()
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)

    local = root / "local"
    local_config = write_config(local, {"datasets": {"wbc": dataset_config(shared_data)}, **common})
    run_snakemake(local, local_config, "evaluate_only")
    return {
        "workdir": workdir,
        "local": local,
        "output": output,
        "returncode": process.returncode,
        "jobs": squeue_jobs(env, run_id),
        "cancelled": cancelled,
        "broken_file": broken_file,
        "slurm_seconds": slurm_seconds,
    }


def test_every_job_went_through_sbatch_to_its_partition(slurm_run):
    jobs = slurm_run["jobs"]
    print(f"SLURM run: {slurm_run['slurm_seconds']:.0f} s; jobs: {json.dumps(jobs, indent=1)}")
    workdir = slurm_run["workdir"]
    ran = {job["id"]: job for job in jobs}
    logs = {rule: workdir / f"logs/wbc/{rule}.log" for rule in ("convert", "split", "recommend", "augment")}
    logs.update(
        {rule: workdir / f"logs/wbc/mobilenet_v2/seed0/{rule}.log" for rule in ("train", "predict", "uncertainty", "evaluate")}
    )
    for rule, log in logs.items():
        attempts = log_context(log)
        assert attempts, f"{log}: no run context"
        for context in attempts:
            # the job id the rule saw is a job of this run, of this rule, in the right partition
            job = ran[context["SLURM_JOB_ID"]]
            assert job["rule"] == rule
            partition = "gpu" if rule in GPU_RULES else "cpu"
            assert context["SLURM_JOB_PARTITION"] == job["partition"] == partition, (rule, context, job)
            if rule in GPU_RULES:
                assert context.get("CUDA_VISIBLE_DEVICES") == "0", (rule, context)
                assert "gpu" in job["gres"], (rule, job)
            else:
                assert "CUDA_VISIBLE_DEVICES" not in context, (rule, context)
                assert "gpu" not in job["gres"], (rule, job)
    # and nothing ran outside SLURM: one sbatch job per executed job (train twice: it was cancelled)
    wbc_jobs = sorted(job["rule"] for job in jobs if (job["wildcards"] or "").startswith("wbc"))
    assert wbc_jobs == sorted([*CPU_RULES, *GPU_RULES, "train"])
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", slurm_run["output"])
    assert sorted(submitted) == sorted(ran)


def assert_resumed_once(slurm_run: dict, dataset: str, run: str, epochs: int = EPOCHS) -> list[dict]:
    """The dataset's train job was cancelled after an epoch and its resubmission went on from the
    checkpoint: no epoch trained twice, none skipped. Returns its two train jobs."""
    cancelled = slurm_run["cancelled"][dataset]
    assert cancelled, f"{dataset}: the train job finished before it could be cancelled"
    train_jobs = [job for job in slurm_run["jobs"] if job["rule"] == "train" and job["wildcards"].startswith(dataset)]
    assert [job["state"] for job in train_jobs] == ["CANCELLED", "COMPLETED"]
    assert train_jobs[0]["id"] == cancelled["job_id"]
    log = (slurm_run["workdir"] / f"logs/{run}/train.log").read_text()
    resumed = re.findall(r"resuming from \S+checkpoint_last\.pt after epoch (\d+)", log)
    assert len(resumed) == 1 and cancelled["epoch"] <= int(resumed[0]) < epochs, log
    trained = [int(e) for e in re.findall(rf"epoch (\d+)/{epochs} train_loss", log)]
    assert trained == list(range(int(resumed[0]) + 1, epochs + 1)), log
    history = pd.read_csv(slurm_run["workdir"] / f"results/{run}/train/history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, epochs + 1))
    return train_jobs


def test_cancelled_training_resumed_from_its_checkpoint(slurm_run):
    train_jobs = assert_resumed_once(slurm_run, "wbc", "wbc/mobilenet_v2/seed0")
    assert all(job["partition"] == "gpu" and "gpu" in job["gres"] and job["tasks"] == 1 for job in train_jobs)
    # The first attempt trained epoch 1 (its log, printed by --show-failed-logs before Snakemake
    # cleared it for the retry) ...
    assert f"epoch 1/{EPOCHS} train_loss" in slurm_run["output"]
    # ... and the job itself did not retry inside its allocation: retries belong to the submitter.
    job_id = slurm_run["cancelled"]["wbc"]["job_id"]
    first_job_log = slurm_run["workdir"] / f".snakemake/slurm_logs/rule_train/wbc_mobilenet_v2_0/{job_id}.log"
    assert "Trying to restart" not in first_job_log.read_text()


def test_distributed_training_ran_as_two_srun_tasks_and_resumed(slurm_run):
    train_jobs = assert_resumed_once(slurm_run, "ddp", "ddp/unet_small/seed0", DDP_EPOCHS)
    # two tasks, no GPU (device: cpu), in the partition of the GPU rules
    assert all(job["tasks"] == 2 and "gpu" not in job["gres"] and job["partition"] == "gpu" for job in train_jobs)
    workdir = slurm_run["workdir"]
    log = (workdir / "logs/ddp/unet_small/seed0/train.log").read_text()  # the second attempt's
    assert "starting 2 training processes: srun --ntasks=2 --kill-on-bad-exit=1" in log
    assert "process 0 of 2 joined (gloo, master localhost:" in log
    card = json.loads((workdir / "results/ddp/unet_small/seed0/train/model_card.json").read_text())
    assert card["processes"] == 2 and card["training"]["epochs_run"] == DDP_EPOCHS


def test_bad_input_fails_once_with_its_message(slurm_run):
    assert slurm_run["returncode"] != 0
    broken = [job for job in slurm_run["jobs"] if job["wildcards"] == "broken"]
    assert [(job["rule"], job["state"]) for job in broken] == [("convert", "FAILED")]
    output = slurm_run["output"]
    assert f"{slurm_run['broken_file']}: cannot be read as an image" in output
    assert "truncated or corrupt" in output


def test_results_equal_a_local_run(slurm_run):
    slurm, local = slurm_run["workdir"], slurm_run["local"]
    assert read_metrics(slurm, "wbc", "mobilenet_v2") == read_metrics(local, "wbc", "mobilenet_v2")
    run = "results/wbc/mobilenet_v2/seed0"
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy", "improved"]
    histories = [pd.read_csv(d / run / "train/history.tsv", sep="\t")[columns] for d in (slurm, local)]
    pd.testing.assert_frame_equal(*histories, check_exact=True)
    predictions = [pd.read_csv(d / run / "predict/predictions.csv") for d in (slurm, local)]
    pd.testing.assert_frame_equal(*predictions, check_exact=True)
    assert (slurm / run / "uncertainty/summary.json").is_file()


# --- the same workflow through DRMAA (profiles/slurm-drmaa) ------------------------------------------


@pytest.fixture(scope="module")
def drmaa_run(slurm_run, shared_data, tmp_path_factory):
    """The WBC dataset and the broken one through profiles/slurm-drmaa, with libdrmaa built from the
    shared slurm-drmaa source (tests/cluster/slurm.sh drmaa)."""
    env = slurm_env()
    built = subprocess.run(["bash", str(SLURM_SH), "drmaa"], capture_output=True, text=True, env=env)
    assert built.returncode == 0, f"slurm.sh drmaa failed:\n{built.stdout}\n{built.stderr}"
    env["DRMAA_LIBRARY_PATH"] = built.stdout.strip().splitlines()[-1]
    root = tmp_path_factory.mktemp("drmaa")
    broken_file = write_truncated_tiff_dataset(root / "broken", shared_data / "isbi2012_em_membranes")
    config = {
        "datasets": {
            "wbc": dataset_config(shared_data),
            "broken": {"task": "segmentation", "data_dir": str(root / "broken"), "patch_size": [32, 32]},
        },
        "seed": 0,
        "augmentations": ["flip"],
    }
    workdir = root / "run"
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(write_config(workdir, config)), "--profile", str(PROJECT / "profiles" / "slurm-drmaa"),
        "--latency-wait", "5", "--keep-going", "train_only",
    ]
    started = time.monotonic()
    process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    output = process.stdout + process.stderr
    submitted = dict(re.findall(r"Submitted DRMAA job (\d+) with external jobid (\d+)", output))
    jobs = []
    for job_id in submitted.values():
        fields = subprocess.run(["squeue", "--states=all", "--noheader", f"--jobs={job_id}",
                                 "--Format=JobID:12|,Partition:12|,Name:80|,State:16|,tres-per-node:40|"],
                                capture_output=True, text=True, env=env, check=True).stdout.split("|")
        name = fields[2].strip()  # snakejob.<rule>.<n>.sh; --gres is a TRES per node
        jobs.append({"id": job_id, "partition": fields[1].strip(), "rule": name.split(".")[1],
                     "state": fields[3].strip(), "gres": fields[4].strip()})
    return {"workdir": workdir, "output": output, "returncode": process.returncode, "jobs": jobs,
            "broken_file": broken_file, "seconds": time.monotonic() - started, "local": slurm_run["local"]}


def test_drmaa_sends_gpu_rules_to_the_gpu_partition(drmaa_run):
    jobs = drmaa_run["jobs"]
    print(f"DRMAA run: {drmaa_run['seconds']:.0f} s; jobs: {json.dumps(jobs, indent=1)}")
    rules = sorted(job["rule"] for job in jobs)
    assert rules == sorted(["convert", "convert", "split", "augment", "recommend", "train"]), rules
    for job in jobs:
        gpu_rule = job["rule"] in GPU_RULES
        assert job["partition"] == ("gpu" if gpu_rule else "cpu"), job
        assert ("gpu" in job["gres"]) == gpu_rule, job


def test_drmaa_bad_input_fails_once_with_its_message(drmaa_run):
    assert drmaa_run["returncode"] != 0
    states = sorted((job["rule"], job["state"]) for job in drmaa_run["jobs"] if job["rule"] == "convert")
    assert states == [("convert", "COMPLETED"), ("convert", "FAILED")]
    assert f"{drmaa_run['broken_file']}: cannot be read as an image" in drmaa_run["output"]


def test_drmaa_results_equal_a_local_run(drmaa_run):
    run = "results/wbc/mobilenet_v2/seed0/train/history.tsv"
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy", "improved"]
    histories = [pd.read_csv(d / run, sep="\t")[columns] for d in (drmaa_run["workdir"], drmaa_run["local"])]
    pd.testing.assert_frame_equal(*histories, check_exact=True)
