"""Bad input through snakemake (issue 14): what a user sees on the console.

* a user's mistake (a truncated image, a wrong setting) is shown as its message, without a Python
  traceback, and the job is not retried;
* a warning about the data (a blank image) appears on the console while the run goes on, and again in
  the summary at the end;
* Ctrl-C stops a local run within seconds and leaves no half-written output.

The corpus of bad inputs itself is tests/unit/test_bad_input_corpus.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECT, SNAKEFILE, run_snakemake, write_config
from PIL import Image

from snakescope.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow


def demo(folder: Path, n: int = 24) -> Path:
    return write_demo_dataset(folder, n_images=n, size=32, seed=0)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One good dataset with a blank image, one with a truncated image: --keep-going, a short training."""
    root = tmp_path_factory.mktemp("bad_input")
    blank = demo(root / "blank")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(blank / "image" / "cell_003.tif")
    broken = demo(root / "broken")
    image = broken / "image" / "cell_005.tif"
    image.write_bytes(image.read_bytes()[:300])
    common = {"task": "classification", "resize": [32, 32], "models": ["mobilenet_v2"], "epochs": 1,
              "batch_size": 4, "max_batches_per_epoch": 1, "evaluate": False, "uncertainty": False,
              "export": False}
    config = {"datasets": {"blank": {**common, "data_dir": str(blank)}, "broken": {**common, "data_dir": str(broken)}},
              "results_library": None}
    process = run_snakemake(root, write_config(root, config), "--keep-going", check=False)
    return {"output": process.stdout + process.stderr, "returncode": process.returncode, "root": root,
            "image": image, "blank": blank / "image" / "cell_003.tif"}


def test_a_users_mistake_is_its_message_without_a_traceback(mixed_run):
    output = mixed_run["output"]
    assert mixed_run["returncode"] != 0
    assert f"ERROR: 1 problem(s) in the input data:\n  - {mixed_run['image']}: cannot be read as an image" in output
    assert "Traceback (most recent call last)" not in output
    assert output.count("Error in rule convert:") == 1  # not retried
    # the traceback is kept for developers beside the rule's log
    assert "InputError" in (mixed_run["root"] / "logs/broken/convert.log.traceback").read_text()


def test_a_warning_is_shown_while_the_run_goes_on_and_again_at_the_end(mixed_run):
    output = mixed_run["output"]
    warning = f"{mixed_run['blank']}: the image is constant (every pixel 0)"
    assert f"snakescope: {warning}" in output  # on the console as convert ran
    summary = output.split("snakescope: 1 warning(s) about the data or settings of this run:", 1)
    assert len(summary) == 2 and warning in summary[1]
    assert (mixed_run["root"] / "results/blank/mobilenet_v2/seed0/train/model.pt").is_file()  # it went on


def test_a_wrong_setting_is_its_message_without_a_traceback(tmp_path):
    config = {"task": "segmentation", "data_dir": str(tmp_path), "learning_rate": "1e-3"}
    process = run_snakemake(tmp_path, write_config(tmp_path, config), "-n", check=False)
    output = process.stdout + process.stderr
    assert process.returncode == 1
    assert "learning_rate: got '1e-3'" in output and "write 0.001" in output
    assert "Traceback" not in output and 'File "' not in output


def test_ctrl_c_stops_a_local_run_within_seconds(tmp_path):
    data = demo(tmp_path / "cells", n=48)
    config = {"task": "segmentation", "data_dir": str(data), "patch_size": [32, 32], "models": ["unet"],
              "epochs": 500, "patience": 500, "batch_size": 8, "uncertainty": False, "export": False,
              "results_library": None}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
               "--configfile", str(write_config(tmp_path, config)), "--cores", "2"]

    def as_in_a_terminal():  # Ctrl-C reaches the foreground process group, whose SIGINT is not ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setpgrp()

    env = {**os.environ, "PYTHONPATH": str(PROJECT / "workflow" / "scripts")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               preexec_fn=as_in_a_terminal)
    train = tmp_path / "results/cells/unet/seed0/train"
    log = tmp_path / "logs/cells/unet/seed0/train.log"
    started = time.monotonic()
    while not (log.is_file() and "epoch 2/" in log.read_text()):
        assert process.poll() is None and time.monotonic() - started < 300, "training did not start"
        time.sleep(0.2)
    pressed = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(60)
    pattern = f"{tmp_path}/.snakemake/scripts/.*train"
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.monotonic() - pressed < 30, "the training job outlived Ctrl-C by 30 s"
        time.sleep(0.1)
    stopped = time.monotonic() - pressed
    print(f"Ctrl-C: everything stopped {stopped:.1f} s after it")
    assert stopped < 10
    assert process.returncode != 0 and not (train / "model.pt").exists()
    assert not list(tmp_path.rglob(".*.tmp*")), "a half-written file was left behind"
    assert (train / "checkpoint_last.pt").is_file()  # a later run resumes from the last finished epoch
