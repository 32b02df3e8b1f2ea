#!/usr/bin/env bash
# Install the peer tools each in its own virtual environment under .peers/ (git-ignored), with torch
# pinned as ours so that every tool runs on the same torch build (about 6.5 GB and 3 minutes each):
#   bash bench/peers/install.sh            # both
#   bash bench/peers/install.sh nnunet     # one of: nnunet biapy
set -euo pipefail
cd "$(dirname "$0")/../.."
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
declare -A PACKAGE=([nnunet]="nnunetv2==2.8.1" [biapy]="biapy==3.7.1")
tools=("$@"); [ ${#tools[@]} -gt 0 ] || tools=(nnunet biapy)
for name in "${tools[@]}"; do
  venv=".peers/$name"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip show "${PACKAGE[$name]%%==*}" >/dev/null 2>&1; then
    echo "$venv: ${PACKAGE[$name]} already installed"
  else
    echo "$venv: installing ${PACKAGE[$name]} with $TORCH_PINS"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q $TORCH_PINS "${PACKAGE[$name]}" tifffile
  fi
  if [ "$name" = nnunet ]; then  # our wall-clock trainer, where nnUNetv2_train looks for trainers
    variants="$("$venv/bin/python" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')"
    cp bench/peers/nnunet_wallclock_trainer.py "$variants/training/nnUNetTrainer/variants/"
  fi
done
