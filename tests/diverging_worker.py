"""`python -m tests.diverging_worker worker ...`: the real `dlite` command line, except that the
trainer's weights turn NaN at step $DLITE_TEST_NAN_AT, so the losses diverge for real
(no learning rate within the config's bounds makes a tiny run diverge reliably)."""

from __future__ import annotations

import os
import sys

import torch

from dlite import train
from worker.cli import main

NAN_AT = int(os.environ["DLITE_TEST_NAN_AT"])
_train_step = train.Trainer.train_step


def _diverging_step(self: train.Trainer) -> None:
    if self.step + 1 == NAN_AT:
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
    _train_step(self)


train.Trainer.train_step = _diverging_step

if __name__ == "__main__":
    sys.exit(main())
