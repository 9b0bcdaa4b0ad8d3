"""The nine D4RL MuJoCo tasks of the paper, in one table.

Every per-task number the method or the dashboard needs (return scale, target
return, guidance weight, D4RL reference returns, published scores and ablations) lives here so
that no other module re-declares it. Kept free of torch so the server can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{file}"


@dataclass(frozen=True)
class Domain:
    """One MuJoCo body: its Gymnasium id and the D4RL score normalisers."""

    name: str
    gym_id: str
    random_return: float
    expert_return: float
    obs_dim: int
    act_dim: int


DOMAINS: dict[str, Domain] = {
    "halfcheetah": Domain("halfcheetah", "HalfCheetah-v4", -280.178953, 12135.0, 17, 6),
    "hopper": Domain("hopper", "Hopper-v4", -20.272305, 3234.3, 11, 3),
    "walker2d": Domain("walker2d", "Walker2d-v4", 1.629008, 4592.3, 17, 6),
}


@dataclass(frozen=True)
class PaperScore:
    """A published D4RL normalised score with where it was published."""

    mean: float
    sem: float | None
    source: str


NEURIPS = "DiffuserLite, NeurIPS 2024 (project page), mean ± s.e. over 5 seeds"
SEED_README = "seed README (earlier arXiv version of the paper)"


PAPER_PLANNING_HZ = {"R1": 79.7, "R2": 200.7}
"""Decisions per second the paper reports on MuJoCo (R1 0.013 s, R2 0.005 s per action)."""
PAPER_PLANNING_SOURCE = "DiffuserLite, NeurIPS 2024, runtime table (MuJoCo; the paper does not state its hardware)"


@dataclass(frozen=True)
class ReferenceCurve:
    """A published learning curve (normalised score by training step) to overlay on a run's chart."""

    variant: str
    steps: tuple[int, ...]
    scores: tuple[float, ...]
    source: str


REFERENCE_CURVES: dict[str, ReferenceCurve] = {
    "halfcheetah-medium-expert-v2": ReferenceCurve(
        "R1",
        (1_000, 11_000, 21_000, 26_000, 31_000, 41_000, 51_000, 61_000, 71_000, 81_000, 86_000),
        (-1.6, -0.5, 1.5, 15.9, 76.8, 78.0, 89.5, 91.9, 93.5, 91.6, 92.8),
        "public Colab reproduction (R1, batch 256, seed hyper-parameters, 100k steps; one seed, quick evaluations)",
    ),
}
"""Learning curves of other reproductions, by task; only one is public so far."""


@dataclass(frozen=True)
class Task:
    """Per-task settings: value scale, and R1/R2 target return and guidance weight."""

    name: str
    domain: Domain
    return_scale: float
    target_return_r1: float
    guidance_r1: float
    target_return_r2: float
    guidance_r2: float
    paper_d: float
    paper_r1: PaperScore
    paper_r2: PaperScore
    seed_readme_r1: PaperScore | None = None

    @property
    def file_name(self) -> str:
        """The D4RL file name: dashes inside the dataset part become underscores."""
        env, _, rest = self.name.partition("-")
        dataset = rest.removesuffix("-v2")
        return f"{env}_{dataset.replace('-', '_')}-v2.hdf5"

    @property
    def url(self) -> str:
        return D4RL_URL.format(file=self.file_name)

    def normalized_score(self, episode_return: float) -> float:
        """D4RL normalised score, 0 for a random policy and 100 for the expert."""
        d = self.domain
        return 100.0 * (episode_return - d.random_return) / (d.expert_return - d.random_return)


def _task(
    name: str,
    scale: float,
    r1: tuple[float, float],
    r2: tuple[float, float],
    paper: tuple[float, float, float, float, float, float],
    seed_readme: float | None = None,
) -> Task:
    d_mean, _, r1_mean, r1_sem, r2_mean, r2_sem = paper
    return Task(
        name=name,
        domain=DOMAINS[name.split("-")[0]],
        return_scale=scale,
        target_return_r1=r1[0],
        guidance_r1=r1[1],
        target_return_r2=r2[0],
        guidance_r2=r2[1],
        paper_d=d_mean,
        paper_r1=PaperScore(r1_mean, r1_sem, NEURIPS),
        paper_r2=PaperScore(r2_mean, r2_sem, NEURIPS),
        seed_readme_r1=None if seed_readme is None else PaperScore(seed_readme, None, SEED_README),
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _task("halfcheetah-medium-expert-v2", 3600, (1.0, 1.0), (0.9, 1.0), (88.5, 0.4, 90.8, 0.9, 84.0, 2.9), 91.9),
        _task("halfcheetah-medium-v2", 1700, (1.0, 10.0), (1.0, 7.0), (48.9, 1.1, 48.6, 0.7, 45.3, 0.5)),
        _task("halfcheetah-medium-replay-v2", 1600, (1.0, 2.0), (1.0, 1.5), (41.6, 0.4, 42.9, 0.4, 39.6, 0.4)),
        _task("hopper-medium-expert-v2", 1200, (0.9, 1.0), (0.9, 1.0), (111.6, 0.2, 110.3, 0.3, 110.1, 0.5), 103.3),
        _task("hopper-medium-v2", 1000, (0.8, 5.0), (1.0, 6.0), (100.9, 1.1, 99.5, 0.7, 96.8, 0.3)),
        _task("hopper-medium-replay-v2", 1000, (1.0, 0.9), (1.0, 1.5), (96.6, 0.3, 97.8, 1.3, 93.2, 0.7)),
        _task("walker2d-medium-expert-v2", 1600, (1.0, 1.0), (1.0, 3.0), (107.1, 0.6, 106.4, 0.3, 106.1, 0.7), 109.1),
        _task("walker2d-medium-v2", 1300, (0.9, 8.0), (0.9, 2.0), (88.8, 0.6, 85.1, 0.5, 83.7, 1.0)),
        _task("walker2d-medium-replay-v2", 1300, (0.9, 1.0), (1.0, 1.0), (90.2, 0.5, 84.6, 1.7, 78.2, 1.7)),
    ]
}


ABLATION_SOURCE = (
    'DiffuserLite, NeurIPS 2024, Table 6 "PRP design choices" (an image: static/images/table4.png '
    "of the project page's repository diffuserlite/diffuserlite.github.io); D4RL normalised score, "
    "mean ± s.e. over 5 seeds, of DiffuserLite-D"
)
ABLATION_VARIANT = "Lite-D"
"""The variant the paper's ablations ran: their default column equals its Lite-D score of the task
(88.5 ± 0.4 on halfcheetah-medium-expert), the DDIM variant with no public code, not R1 or R2."""


@dataclass(frozen=True)
class PaperAblation:
    """One of the paper's ablations: a setting varied on one task at a fixed planning
    horizon (the first level's span), with the published score of each value."""

    title: str
    task: str
    setting: str
    planning_horizon: int
    scores: tuple[tuple[Any, PaperScore], ...]
    variant: str = ABLATION_VARIANT


def _ablation(title: str, setting: str, scores: dict[Any, tuple[float, float]]) -> PaperAblation:
    return PaperAblation(
        title,
        "halfcheetah-medium-expert-v2",
        setting,
        129,
        tuple((value, PaperScore(mean, sem, ABLATION_SOURCE)) for value, (mean, sem) in scores.items()),
    )


PAPER_ABLATIONS: dict[str, PaperAblation] = {
    "levels": _ablation(
        "number of plan levels", "horizons", {(9, 17): (75.6, 8.3), (5, 5, 9): (88.5, 0.4), (5, 3, 5, 5): (88.3, 0.5)}
    ),
    "level-horizons": _ablation(
        "points per level", "horizons", {(3, 5, 17): (85.6, 0.6), (9, 5, 5): (88.6, 0.7), (17, 5, 3): (89.0, 1.7)}
    ),
}
"""The paper's ablations (Antmaze and Kitchen rows exist too; the lab runs MuJoCo only). A
`horizons` value is the tuple of points per level, as `dlite.config.Config.horizons`."""


def paper_ablation_score(task: str, setting: str, value: Any) -> PaperScore | None:
    """The paper's score of `task` with `setting` at `value`, from any of its ablations."""
    key = tuple(value) if isinstance(value, list) else value
    return next(
        (
            score
            for a in PAPER_ABLATIONS.values()
            if a.task == task and a.setting == setting
            for v, score in a.scores
            if v == key
        ),
        None,
    )


class UnknownTaskError(ValueError):
    """A task name that is not one of the nine D4RL MuJoCo tasks."""


def get_task(name: str) -> Task:
    """Look a task up, naming the valid ones when it is unknown."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}") from None


def domain_of(name: str) -> Domain:
    """The domain of a task name, also for local files named like `hopper-...`."""
    key = name.split("-")[0].split("_")[0].lower()
    if key not in DOMAINS:
        raise UnknownTaskError(
            f"cannot tell the MuJoCo domain of {name!r}; expected a name starting with one of: {', '.join(DOMAINS)}"
        )
    return DOMAINS[key]
