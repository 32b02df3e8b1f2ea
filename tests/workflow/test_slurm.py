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
  ends exactly where an uninterrupted local one does (CPU determinism).

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


def dataset_config(shared_data: Path) -> dict:
    return wbc_dataset(
        shared_data, part=2, resize=[32, 32], models=["mobilenet_v2"], batch_size=8, epochs=EPOCHS,
        patience=EPOCHS,
        # enough batches that an epoch lasts a few seconds, so the job can be killed between epochs
        max_batches_per_epoch=3, mc_samples=3,
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
            "--Format=JobID:12|,Partition:12|,Comment:100|,State:16|,tres-per-job:40|",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        if line.strip():
            job_id, partition, comment, state, gres = (f.strip() for f in line.split("|")[:5])
            rule = re.match(r"rule_([A-Za-z0-9]+?)(?:_wildcards_(.*))?$", comment)
            jobs.append(
                {
                    "id": job_id,
                    "partition": partition,
                    "rule": rule.group(1),
                    "wildcards": rule.group(2),
                    "state": state,
                    "gres": gres,
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
    config = {
        "datasets": {
            "wbc": dataset_config(shared_data),
            "broken": {"task": "segmentation", "data_dir": str(root / "broken"), "patch_size": [32, 32]},
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
    train_dir = workdir / "results/wbc/mobilenet_v2/seed0/train"
    train_log = workdir / "logs/wbc/mobilenet_v2/seed0/train.log"
    output_path = root / "snakemake.out"
    started = time.monotonic()
    cancelled = None
    with open(output_path, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            while process.poll() is None:
                if time.monotonic() - started > RUN_TIMEOUT_S:
                    raise AssertionError(f"SLURM run exceeded {RUN_TIMEOUT_S} s")
                if cancelled is None and train_log.is_file() and " epoch " in train_log.read_text():
                    epoch = checkpoint_epoch(train_dir / "checkpoint_last.pt")
                    if epoch is not None and 1 <= epoch < EPOCHS:
                        job_id = log_context(train_log)[-1]["SLURM_JOB_ID"]
                        subprocess.run(["scancel", job_id], env=env, check=True)
                        cancelled = {"job_id": job_id, "epoch": epoch}
                time.sleep(0.2)
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
    wbc_jobs = sorted(job["rule"] for job in jobs if job["wildcards"] and job["wildcards"].startswith("wbc"))
    assert wbc_jobs == sorted([*CPU_RULES, *GPU_RULES, "train"])
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", slurm_run["output"])
    assert sorted(submitted) == sorted(ran)


def test_cancelled_training_resumed_from_its_checkpoint(slurm_run):
    cancelled = slurm_run["cancelled"]
    assert cancelled, "the train job finished before it could be cancelled"
    train_jobs = [job for job in slurm_run["jobs"] if job["rule"] == "train"]
    assert [job["state"] for job in train_jobs] == ["CANCELLED", "COMPLETED"]
    assert train_jobs[0]["id"] == cancelled["job_id"]
    assert all(job["partition"] == "gpu" and "gpu" in job["gres"] for job in train_jobs)
    # The first attempt trained epoch 1 (its log, printed by --show-failed-logs before Snakemake
    # cleared it for the retry) ...
    assert f"epoch 1/{EPOCHS} train_loss" in slurm_run["output"]
    # ... and the job itself did not retry inside its allocation: retries belong to the submitter.
    workdir = slurm_run["workdir"]
    first_job_log = workdir / f".snakemake/slurm_logs/rule_train/wbc_mobilenet_v2_0/{cancelled['job_id']}.log"
    assert "Trying to restart" not in first_job_log.read_text()
    # The second attempt went on from the checkpoint: no epoch trained twice, none skipped.
    log = (workdir / "logs/wbc/mobilenet_v2/seed0/train.log").read_text()
    resumed = re.findall(r"resuming from \S+checkpoint_last\.pt after epoch (\d+)", log)
    assert len(resumed) == 1 and cancelled["epoch"] <= int(resumed[0]) < EPOCHS, log
    epochs = [int(e) for e in re.findall(rf"epoch (\d+)/{EPOCHS} train_loss", log)]
    assert epochs == list(range(int(resumed[0]) + 1, EPOCHS + 1)), log
    history = pd.read_csv(workdir / "results/wbc/mobilenet_v2/seed0/train/history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))


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
