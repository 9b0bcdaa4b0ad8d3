"""The Colab notebook is valid, and its code uses only settings and routes that exist."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from dlite.config import FIELDS
from dlite.demo import DEMO_TASK
from tests.app_helpers import ROOT, free_port, wait_for
from tests.conftest import TINY

NOTEBOOK = Path(__file__).resolve().parents[1] / "colab" / "DiffuserLite_Lab.ipynb"


def test_notebook_cells_parse_and_use_real_settings() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == 2, "one setup cell and one link cell"
    for source in code:
        ast.parse(source)
    setup = code[0]
    assert 'userdata.get("HF_TOKEN")' in setup and '"up", "--data-dir"' in setup
    for key in ("seed", "hub_repo", "backup_dir"):
        assert f'"{key}"' in setup and key in FIELDS
    assert "proxyPort({PORT})" in code[1]


# -- the notebook executed for real, then a disconnect --------------------------------

FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
PACKAGE = ("pyproject.toml", "README.md", "dlite", "app", "worker")
RUN_SETTINGS = {**TINY, "variant": "R1", "diffusion_gradient_steps": 150, "invdyn_gradient_steps": 150,
                "smoke_steps": 10, "log_interval": 10, "save_interval": 50, "backup_every": 50, "keep_every": 50,
                "eval_every": 0, "num_envs": 2, "num_episodes": 1, "max_episode_steps": 20}
RUN_KEY = f"demo-{DEMO_TASK}-r1-seed0"


class Colab:
    """A fresh Colab VM for the notebook: its own Python (a virtual environment that sees
    the installed dependencies but not this checkout), home, /content and port, the fake
    google.colab, and the lab installed by the notebook itself from a copy of the checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        source = root / "lab-source"
        source.mkdir()
        for name in PACKAGE:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, source / name)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                       check=True)
        kernel = root / "jupyter" / "kernels" / "colab"
        kernel.mkdir(parents=True)
        (kernel / "kernel.json").write_text(json.dumps({
            "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (fake Colab)", "language": "python"}))
        self.content = root / "content"
        self.data = self.content / "dlite"
        self.port = free_port()
        self.killed: list[int] = []
        keep = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "DLITE_TOKEN", "DLITE_DATA_DIR", "DLITE_DATASETS", "DATABASE_URL",
                             "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VIRTUAL_ENV")}
        self.env = {**keep, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(root / "home"),
                    "PYTHONPATH": str(FAKE_COLAB), "MUJOCO_GL": "disable",
                    "DLITE_INSTALL": str(source), "DLITE_DATA_DIR": str(self.data), "DLITE_PORT": str(self.port),
                    # offline, like CI: the dependencies are there already, setuptools builds the lab
                    "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def boot(self) -> None:
        """A fresh VM: nothing of the previous one is left, but the backup folder lives on."""
        for name in ("content", "home"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        self.content.mkdir()

    @contextmanager
    def session(self, nb: nbformat.NotebookNode) -> Iterator[list[str]]:
        """Starts a kernel and runs every code cell, as a user does, yielding each code cell's
        printed output; then a disconnect: the kernel and every process it started are
        killed (SIGKILL: a VM that goes away says no goodbye). `killed` gets their pids."""
        specs = KernelSpecManager(kernel_dirs=[str(self.root / "jupyter" / "kernels")], ensure_native_kernel=False)
        client = NotebookClient(nb, km=AsyncKernelManager(kernel_name="colab", kernel_spec_manager=specs),
                                timeout=600, resources={"metadata": {"path": str(self.content)}})
        with client.setup_kernel(env=self.env, cleanup_kc=True):
            try:
                printed = []
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index)
                        printed.append("".join(o.get("text", "") for o in cell.outputs
                                               if o.output_type == "stream"))
                yield printed
            finally:
                self.killed = descendants(client.km.provisioner.pid)
                for pid in self.killed:
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not [p for p in self.killed if alive(p)], 30, "the notebook's processes to die")

    def api(self) -> httpx.Client:
        token = (self.data / "token").read_text().strip()
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """wait_for, with the lab's log in the failure message."""
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; dlite-up.log ends with:\n{self.log()}") from None

    def log(self) -> str:
        path = self.content / "dlite-up.log"
        return path.read_text()[-3000:] if path.exists() else "(no dlite-up.log)"


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def fill_form(source: str, **values: object) -> str:
    """Sets Colab form fields (`NAME = value  #@param ...` lines) as a user does in the form."""
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*?(  #@param.*)$", lambda m: f"{name} = {value!r}{m.group(1)}",
                            source, flags=re.M)
        assert n == 1, f"no form field {name}"
    return source


def manifest_steps(folder: Path) -> list[int]:
    manifest = folder / "runs" / RUN_KEY / "manifest.json"
    return sorted(int(s) for s in json.loads(manifest.read_text())["checkpoints"]) if manifest.exists() else []


def test_notebook_runs_on_a_fake_colab_and_resumes_after_a_disconnect(tmp_path: Path) -> None:
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    backup_dir = drive / "diffuserlite"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    setup.source = fill_form(setup.source, DEMO=True, BACKUP_DIR=str(backup_dir), SETTINGS=RUN_SETTINGS)
    colab = Colab(tmp_path)
    total = RUN_SETTINGS["diffusion_gradient_steps"]

    colab.boot()
    with colab.session(nb) as printed:
        assert f"running: {RUN_KEY}" in printed[0]
        token = (colab.data / "token").read_text().strip()
        assert f"Dashboard: http://127.0.0.1:{colab.port}/" in printed[1] and token in printed[1]
        colab.wait(lambda: bool(manifest_steps(backup_dir)), 300, "the first backup of training")
    assert len(colab.killed) >= 4, f"kernel, dlite up, server and worker: {colab.killed}"
    last = max(manifest_steps(backup_dir))
    assert last < total, "the disconnect came before the end of training"
    backed_up = json.loads((backup_dir / "runs" / RUN_KEY / "metrics.json").read_text())["metrics"]["loss0"]

    colab.boot()  # a fresh VM: the lab, its database, checkpoints and token are gone
    with colab.session(nb):
        api = colab.api()
        run_id = next(r["id"] for r in api.get("/api/runs").json() if r["name"] == RUN_KEY)
        colab.wait(lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"), 300,
                   "the resumed run to finish")
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "succeeded", (run.get("error"), colab.log())
        start = next(i for i in run["checklist"] if i["key"] == "train.start")
        assert start["detail"] == f"resumed from step {last} (backup folder {backup_dir})"
        loss = api.get(f"/api/runs/{run_id}/export").json()["metrics"]["loss0"]
        assert [s for s, _, _ in loss] == list(range(10, total + 1, 10)), "every logged step exactly once"
        restored = [p for p in backed_up if p[0] <= last]
        assert [p for p in loss if p[0] <= last] == restored, "the curves up to the backup are the backup's"
        assert max(manifest_steps(backup_dir)) == total
