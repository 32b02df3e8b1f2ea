"""nnU-Net v2 trainer that trains for a wall-clock budget instead of 1000 epochs x 250 iterations.

bench/peers/install.sh copies this file into the peer environment's nnunetv2/training/nnUNetTrainer/
variants/, where `nnUNetv2_train ... -tr nnUNetTrainer_WallClock` finds it. Everything else is nnU-Net's
default trainer (its plans, augmentation, loss, deep supervision, SGD with poly learning rate). Only the
length changes: epochs are shortened (NNUNET_ITERATIONS_PER_EPOCH, default 25 instead of 250) so that the
budget holds many of them, and after each epoch the number of epochs is re-estimated from the slowest
epoch so far so that the poly schedule still decays to zero when the budget NNUNET_TRAIN_SECONDS ends.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_WallClock(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device | None = None):  # nnU-Net passes the device it was given
        device = torch.device("cuda") if device is None else device
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.train_seconds = float(os.environ["NNUNET_TRAIN_SECONDS"])
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_ITERATIONS_PER_EPOCH", 25))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)

    def run_training(self):
        started = time.monotonic()
        self.on_train_start()
        slowest = 0.0
        while self.current_epoch < self.num_epochs:
            epoch_started = time.monotonic()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()  # increments current_epoch
            slowest = max(slowest, time.monotonic() - epoch_started)
            remaining = self.train_seconds - (time.monotonic() - started)
            self.num_epochs = self.current_epoch + max(0, int(remaining // slowest))
            self.lr_scheduler.max_steps = max(self.num_epochs, self.current_epoch + 1)
            self.print_to_log_file(f"wall-clock budget: {remaining:.0f} s left, {self.num_epochs} epochs planned")
        self.on_train_end()
