"""`python -m tests.diverging_worker worker ...`: the real `dlite` command line, except that the
trainer's weights turn NaN at step $DLITE_TEST_NAN_AT, so the losses diverge for real
(no learning rate within the config's bounds makes a tiny run diverge reliably), and that at
each step of $DLITE_TEST_SPIKES (comma-separated) the losses it logs turn non-finite (loss0 NaN,
loss1 inf) while the weights stay finite: spikes a run trains on through (on_nonfinite=continue)."""

from __future__ import annotations

import os
import sys

import torch

from dlite import train
from dlite.dataset import Batch
from worker.cli import main

NAN_AT = int(os.environ.get("DLITE_TEST_NAN_AT", "0"))
SPIKES = {int(s) for s in os.environ.get("DLITE_TEST_SPIKES", "").split(",") if s}
_train_step = train.Trainer.train_step


def _diverging_step(self: train.TrainerBase[Batch]) -> None:
    if self.out_dir is None:  # the device check's trainers: the run's own training is what diverges
        _train_step(self)
        return
    if self.step + 1 == NAN_AT:
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
    _train_step(self)
    if self.step in SPIKES:  # what the log interval ending here reports, not what training uses
        self.loss_sum[0], self.loss_sum[1] = float("nan"), float("inf")


train.Trainer.train_step = _diverging_step  # type: ignore[method-assign]  # the patch is the point

if __name__ == "__main__":
    sys.exit(main())
