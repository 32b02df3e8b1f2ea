"""Console output of a rule: its progress and warnings reach the terminal, the rest only its log file."""

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "workflow" / "scripts"

RULE = """
import logging, sys
sys.path.insert(0, {scripts!r})
from snakescope.logs import PROGRESS, log_to_file
log_to_file({log!r})
log = logging.getLogger("snakescope.trainer")
log.info("epoch 1/3 train_loss 0.5000", extra=PROGRESS)
log.info("opened the checkpoint")
log.warning("12 images are blank")
"""


def test_progress_and_warnings_reach_the_console_with_their_job_and_everything_the_log(tmp_path):
    log_file = tmp_path / "logs" / "cells" / "unet" / "seed0" / "train.log"
    code = RULE.format(scripts=str(SCRIPTS), log=str(log_file))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    console = [line for line in run.stderr.splitlines() if line.startswith("snakescope")]
    assert console == ["snakescope [cells/unet/seed0/train]: epoch 1/3 train_loss 0.5000",
                       "snakescope: 12 images are blank"]
    logged = log_file.read_text()
    for message in ("epoch 1/3 train_loss 0.5000", "opened the checkpoint", "12 images are blank"):
        assert message in logged
