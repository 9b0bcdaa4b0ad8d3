"""Data: D4RL file handling, episode layout, values and window sampling."""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dlite import d4rl
from dlite.config import from_dict
from dlite.dataset import WindowDataset, discounted_values, split_episodes
from dlite.files import atomic_path
from dlite.tasks import TASKS, get_task


def test_task_table_file_names_and_urls() -> None:
    task = get_task("halfcheetah-medium-expert-v2")
    assert task.file_name == "halfcheetah_medium_expert-v2.hdf5"
    assert task.url == (
        "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5"
    )
    assert get_task("walker2d-medium-replay-v2").file_name == "walker2d_medium_replay-v2.hdf5"
    assert len(TASKS) == 9


def test_values_match_brute_force(tiny_hdf5: Path) -> None:
    raw = d4rl.load(tiny_hdf5)
    (episode, position), rewards = split_episodes(raw, -100.0)
    true_terminal = raw.terminals & ~raw.timeouts
    assert true_terminal.sum() == 1 and rewards[true_terminal][0] == -100.0
    n_ep = episode.max() + 1
    padded = np.zeros((n_ep, 200), np.float32)
    padded[episode, position] = rewards
    values = discounted_values(padded, 0.997)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ep, s = rng.integers(n_ep), rng.integers(150)
        length = (episode == ep).sum()
        brute = sum(0.997**k * padded[ep, s + k] for k in range(max(length - s, 0)))
        assert values[ep, s] == pytest.approx(brute, rel=1e-5, abs=1e-4)


def test_windows_strides_starts_and_padding(tiny_hdf5: Path) -> None:
    cfg = from_dict({"horizons": [3, 3, 5], "batch_size": 64})
    assert cfg.spans == (17, 9, 5) and cfg.strides == (8, 4, 1)
    raw = d4rl.load(tiny_hdf5)
    data = WindowDataset(raw, cfg)
    assert list(data.lengths) == [160, 160, 80, 160] and data.pad == 1000, "padded to D4RL length"
    for span, starts in zip(cfg.spans, data.starts):
        ep, t = starts // data.pad, starts % data.pad
        assert (t <= torch.minimum(data.episode_lengths[ep] - 1, torch.tensor(data.pad - span))).all()
        assert len(starts) == sum(min(n - 1, data.pad - span) + 1 for n in data.lengths)
    obs = data.obs.view(data.n_episodes, data.pad, -1)
    assert (obs[2, 80:] == 0).all(), "steps after an episode's end are zero padding"
    torch.manual_seed(0)
    batch = data.sample(64)
    for level, (points, stride) in enumerate(zip(batch.points, cfg.strides)):
        assert points.shape == (64, cfg.horizons[level], raw.observations.shape[1])
        flat = data.obs
        # each sampled window is a real strided slice of some episode
        for window in points[:8]:
            hits = (flat == window[0]).all(1).nonzero().flatten()
            assert any(
                torch.equal(flat[h + torch.arange(len(window)) * stride], window)
                for h in hits
                if h + (len(window) - 1) * stride < len(flat)
            )
    assert batch.obs.shape == (64 * 4, raw.observations.shape[1])
    assert batch.pair_mask.shape == (64 * 4, 1)


def test_invdyn_pairs_past_episode_end_are_masked(tiny_hdf5: Path) -> None:
    data = WindowDataset(d4rl.load(tiny_hdf5), from_dict({}))
    data.starts[-1] = torch.tensor([2 * data.pad + 75])  # episode 2 has 80 steps: steps 75..83
    batch = data.sample(1)
    assert batch.pair_mask.flatten().tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert torch.equal(batch.obs[0], data.obs[2 * data.pad + 75])
    assert torch.equal(batch.next_obs[0], data.obs[2 * data.pad + 76])


def test_normalizer_uses_dataset_statistics(tiny_hdf5: Path) -> None:
    raw = d4rl.load(tiny_hdf5)
    data = WindowDataset(raw, from_dict({}))
    np.testing.assert_allclose(data.normalizer.mean, raw.observations.mean(0), rtol=1e-5, atol=1e-6)
    assert (data.normalizer.std > 0).all()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(d4rl.DatasetError, match="nothere.hdf5 does not exist"):
        d4rl.resolve(str(tmp_path / "nothere.hdf5"))


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.hdf5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(d4rl.DatasetError, match=r"broken.hdf5: cannot be read as HDF5.*truncated"):
        d4rl.load(bad)


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((5, 17))
        f["actions"] = np.zeros((5, 6))
    with pytest.raises(d4rl.DatasetError, match="partial.hdf5: missing dataset key.*rewards, terminals, timeouts"):
        d4rl.load(path)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown task 'hopper-expert-v9'.*halfcheetah-medium-expert-v2"):
        d4rl.resolve("hopper-expert-v9")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_download_is_atomic_with_progress_and_failure_names_url(
    tmp_path: Path, tiny_hdf5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "halfcheetah_medium_expert-v2.hdf5").write_bytes(tiny_hdf5.read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/{{file}}"
        monkeypatch.setattr("dlite.tasks.D4RL_URL", base)
        monkeypatch.setenv("DLITE_DATASETS", str(tmp_path / "cache"))
        monkeypatch.setenv("HOME", str(tmp_path))
        seen: list[tuple[int, int | None]] = []
        path = d4rl.resolve("halfcheetah-medium-expert-v2", lambda d, t: seen.append((d, t)))
        assert path == tmp_path / "cache" / "halfcheetah_medium_expert-v2.hdf5"
        assert path.read_bytes() == tiny_hdf5.read_bytes()
        assert seen[-1] == (path.stat().st_size, path.stat().st_size)
        assert not list(path.parent.glob("*.partial"))
        assert d4rl.resolve("halfcheetah-medium-expert-v2") == path, "second call re-uses the cache"
        with pytest.raises(
            d4rl.DatasetError,
            match=r"could not download http://127\.0\.0\.1:\d+/hopper_medium-v2"
            r"\.hdf5.*by hand.*hopper_medium-v2\.hdf5",
        ):
            d4rl.resolve("hopper-medium-v2")
        assert not (tmp_path / "cache" / "hopper_medium-v2.hdf5").exists()
        assert not list((tmp_path / "cache").glob("*.partial"))
    finally:
        server.shutdown()


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    with atomic_path(target) as tmp:
        tmp.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["state.json"]
