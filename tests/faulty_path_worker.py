"""`python -m tests.faulty_path_worker worker ...`: the real `dlite` command line, except that two
optional speed-ups are broken the ways a new GPU breaks them, wherever they are built: every
packed planner's actions are off by 1e-3 (a silently wrong kernel) and a trainer on a path with
fused optimisers raises when it is built (a kernel this device lacks). The device check must refuse both,
and the run must train and evaluate on the fallbacks."""

from __future__ import annotations

import sys
from typing import cast

import numpy as np

from dlite.planner import Planner
from dlite.train import STEP_PATHS, Trainer
from worker.cli import main

_act, _init = Planner.act, Trainer.__init__


def _off_when_packed(self: Planner, obs: np.ndarray) -> np.ndarray:
    return _act(self, obs) + (1e-3 if self.packed else 0.0)


def _no_fused(self: Trainer, *args: object, **kwargs: object) -> None:
    path = cast(str, kwargs.get("path") or (args[3] if len(args) > 3 else "eager"))
    if STEP_PATHS[path].fused:
        raise RuntimeError("fused AdamW is not supported on this device\nsecond line")
    _init(self, *args, **kwargs)  # type: ignore[arg-type]


Planner.act = _off_when_packed  # type: ignore[method-assign]
Trainer.__init__ = _no_fused  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
