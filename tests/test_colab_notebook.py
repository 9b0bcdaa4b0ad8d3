"""The Colab notebook is valid, and its code uses only settings and routes that exist."""

from __future__ import annotations

import ast
import html
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
from typing import cast

import httpx
import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import LocalProvisioner
from nbclient import NotebookClient

from dlite.config import FIELDS
from dlite.demo import DEMO_TASK
from tests.app_helpers import ROOT, free_port, wait_for
from tests.conftest import TINY
from tests.test_state_backup import runs_in_backup

NOTEBOOK = Path(__file__).resolve().parents[1] / "colab" / "DiffuserLite_Lab.ipynb"


def test_notebook_cells_parse_and_use_real_settings() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == 2, "one setup cell and one dashboard cell"
    for source in code:
        ast.parse(source)
    setup = code[0]
    assert 'secret("HF_TOKEN")' in setup and '"up", "--data-dir"' in setup
    assert '"--backup-dir", BACKUP_DIR' in setup and '"--hub-repo", HUB_REPO' in setup
    assert setup.rindex("raise SetupError", 0, setup.index('"pip", "install"')) > setup.index("if not INSTALL"), (
        "every setting is checked before anything is installed"
    )
    for key in ("seed", "hub_repo", "backup_dir"):
        assert f'"{key}"' in setup and key in FIELDS
    assert "proxyPort({PORT})" in code[1] and "serve_kernel_port_as_iframe(PORT" in code[1]
    assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code"), "saved without outputs"


# -- the notebook executed for real, then a disconnect --------------------------------

FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
PACKAGE = ("pyproject.toml", "README.md", "dlite", "app", "worker")
RUN_SETTINGS = {
    **TINY,
    "variant": "R1",
    "diffusion_gradient_steps": 1000,
    "invdyn_gradient_steps": 1000,
    "smoke_steps": 10,
    "log_interval": 10,
    "save_interval": 50,
    "backup_every": 50,
    "keep_every": 50,
    "eval_every": 0,
    "num_envs": 2,
    "num_episodes": 1,
    "max_episode_steps": 20,
}
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
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        kernel = root / "jupyter" / "kernels" / "colab"
        kernel.mkdir(parents=True)
        (kernel / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "Python 3 (fake Colab)",
                    "language": "python",
                }
            )
        )
        self.content = root / "content"
        self.data = self.content / "dlite"
        self.port = free_port()
        self.killed: list[int] = []
        keep = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "PYTHONPATH",
                "DLITE_TOKEN",
                "DLITE_DATA_DIR",
                "DLITE_DATASETS",
                "DATABASE_URL",
                "HF_TOKEN",
                "HUGGING_FACE_HUB_TOKEN",
                "VIRTUAL_ENV",
            )
        }
        self.env = {
            **keep,
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(root / "home"),
            "PYTHONPATH": str(FAKE_COLAB),
            "MUJOCO_GL": "disable",
            # a lost worker's run is handed on within seconds, and the lab's state saved every 3 s
            "DLITE_LEASE_SECONDS": "5",
            "DLITE_STATE_EVERY_MINUTES": "0.05",
            "DLITE_INSTALL": str(source),
            "DLITE_DATA_DIR": str(self.data),
            "DLITE_PORT": str(self.port),
            # offline, like CI: the dependencies are there already, setuptools builds the lab
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def boot(self) -> None:
        """A fresh VM: nothing of the previous one is left, but the backup folder lives on."""
        for name in ("content", "home"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        self.content.mkdir()

    @contextmanager
    def session(self, nb: nbformat.NotebookNode, allow_errors: bool = False) -> Iterator[list[str]]:
        """Starts a kernel and runs every code cell, as a user does, yielding each code cell's
        printed output; then a disconnect: the kernel and every process it started are
        killed (SIGKILL: a VM that goes away says no goodbye). `killed` gets their pids."""
        specs = KernelSpecManager(kernel_dirs=[str(self.root / "jupyter" / "kernels")], ensure_native_kernel=False)
        client = NotebookClient(
            nb,
            km=AsyncKernelManager(kernel_name="colab", kernel_spec_manager=specs),
            timeout=600,
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(self.content)}},
        )
        with client.setup_kernel(env=self.env, cleanup_kc=True):
            try:
                printed = []
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index)
                        printed.append("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
                yield printed
            finally:
                assert client.km is not None  # setup_kernel made it
                kernel = cast(LocalProvisioner, client.km.provisioner)  # the default: a local process
                assert kernel.pid is not None
                self.killed = descendants(kernel.pid)
                for pid in self.killed:
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not [p for p in self.killed if alive(p)], 30, "the notebook's processes to die")

    def api(self) -> httpx.Client:
        token = (self.data / "token").read_text().strip()
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

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

        def assign(m: re.Match[str], name: str = name, value: object = value) -> str:
            return f"{name} = {value!r}{m.group(1)}"

        source, n = re.subn(rf"^{name} = .*?(  #@param.*)$", assign, source, flags=re.M)
        assert n == 1, f"no form field {name}"
    return source


def manifest_steps(folder: Path) -> list[int]:
    manifest = folder / "runs" / RUN_KEY / "manifest.json"
    return sorted(int(s) for s in json.loads(manifest.read_text())["checkpoints"]) if manifest.exists() else []


def outputs_text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell's saved output holds: streams, HTML, errors."""
    return json.dumps(cell.outputs)


def iframe_src(cell: nbformat.NotebookNode) -> str:
    found = re.search(r'<iframe src="([^"]+)"', outputs_text(cell).replace('\\"', '"'))
    assert found, f"no iframe in {outputs_text(cell)[:500]}"
    return html.unescape(found.group(1))


def assert_logged_in_with_relative_assets(url: str) -> None:
    """What a browser gets from a login link: the runs page, logged in, whose styles, scripts
    and links are root-relative (an absolute http:// URL breaks behind Colab's HTTPS proxy)."""
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        landing = browser.get(url)
        onward = re.search(r'<a href="([^"]+)" id="continue">', landing.text)  # the page a browser goes on to
        assert landing.status_code == 200 and onward, landing.text[:300]
        page = browser.get(httpx.URL(url).join(html.unescape(onward.group(1))))
        assert page.status_code == 200 and "Log out" in page.text, page.text[:300]
        assets = re.findall(r'(?:href|src|action)="([^"]*)"', page.text)
        assert assets and all(a.startswith(("/", "#", "?", "data:")) and not a.startswith("//") for a in assets), assets
        assert "/static/style.css" in page.text
        again = browser.get(url, headers={"Cookie": ""})
    assert "Log out" not in again.text, "a login link works once"


SETUP_REFUSALS: dict[str, dict[str, object]] = {
    "Set REPO_URL": dict(),
    "Set HUB_REPO": dict(DEMO=False),
    "Colab secret HF_TOKEN": dict(DEMO=False, HUB_REPO="someone/results"),
    "allow Google Drive": dict(BACKUP_DIR="/content/drive/MyDrive/diffuserlite"),
    "must be an absolute folder": dict(BACKUP_DIR="MyDrive/diffuserlite"),
}


def test_placeholders_are_refused_with_one_sentence_before_anything_is_installed(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    cells = []
    for expected, form in SETUP_REFUSALS.items():
        source = fill_form(setup.source, **form)
        if expected == "Set REPO_URL":  # as on Colab: the lab comes from REPO_URL, nothing overrides it
            source = "import os\nos.environ.pop('DLITE_INSTALL', None)\n" + source
        else:
            source = f"import os\nos.environ['DLITE_INSTALL'] = {str(tmp_path / 'never-installed')!r}\n" + source
        cells.append(nbformat.v4.new_code_cell(source))
    nb.cells = cells
    colab = Colab(tmp_path)
    colab.boot()
    with colab.session(nb, allow_errors=True):
        pass
    for expected, cell in zip(SETUP_REFUSALS, nb.cells):
        [error] = [o for o in cell.outputs if o.output_type == "error"]
        assert error.ename == "SetupError" and expected in error.evalue, (expected, error.evalue)
        assert error.traceback == [f"\u26a0 {error.evalue}"], "one sentence, no traceback"
    assert not colab.data.exists(), "nothing was started"


def demo_notebook(**form: object) -> nbformat.NotebookNode:
    """The notebook as a user fills its form for the demo run."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    setup.source = fill_form(setup.source, DEMO=True, SETTINGS=RUN_SETTINGS, **form)
    return nb


def demo_run_id(api: httpx.Client) -> int:
    return next(r["id"] for r in api.get("/api/runs").json() if r["name"] == RUN_KEY)


def test_demo_needs_no_token_or_drive_and_the_dashboard_shows_in_the_notebook(tmp_path: Path) -> None:
    nb = demo_notebook()
    setup, dashboard = [c for c in nb.cells if c.cell_type == "code"]
    colab = Colab(tmp_path)
    colab.boot()
    with colab.session(nb) as printed:
        assert f"running: {RUN_KEY}" in printed[0]
        assert "device check on" in printed[0] and "chosen: training" in printed[0], "the check, before training"
        token = (colab.data / "token").read_text().strip()
        api = colab.api()
        run_id = demo_run_id(api)
        config = api.get(f"/api/runs/{run_id}").json()["config"]
        assert not config.get("hub_repo") and not config.get("backup_dir"), "no backups asked for"
        assert token not in outputs_text(setup) + outputs_text(dashboard), "the token is never in the saved output"
        assert_logged_in_with_relative_assets(iframe_src(dashboard))
        link = re.search(r"Dashboard in a browser tab: (\S+)", printed[1])
        assert link and link.group(1).startswith(f"http://127.0.0.1:{colab.port}/"), printed[1]
        assert_logged_in_with_relative_assets(link.group(1))


def test_notebook_runs_on_a_fake_colab_and_a_fresh_vm_gets_the_same_lab_back(tmp_path: Path) -> None:
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    backup_dir = drive / "diffuserlite"
    nb = demo_notebook(BACKUP_DIR=str(backup_dir))
    colab = Colab(tmp_path)
    total = RUN_SETTINGS["diffusion_gradient_steps"]
    assert isinstance(total, int)

    colab.boot()
    with colab.session(nb) as printed:
        assert f"running: {RUN_KEY}" in printed[0]
        token = (colab.data / "token").read_text().strip()
        api = colab.api()
        run_id = demo_run_id(api)
        assert api.patch(f"/api/runs/{run_id}", json={"note": "from VM 1", "tags": ["colab"]}).status_code == 200
        colab.wait(
            lambda: (
                bool(manifest_steps(backup_dir))
                and (RUN_KEY, "from VM 1") in runs_in_backup(backup_dir, tmp_path / "peek")
            ),
            300,
            "the first backup of training and a saved state with the note",
        )
    assert len(colab.killed) >= 4, f"kernel, dlite up, server and worker: {colab.killed}"
    last = max(manifest_steps(backup_dir))
    assert last < total, "the disconnect came before the end of training"
    backed_up = json.loads((backup_dir / "runs" / RUN_KEY / "metrics.json").read_text())["metrics"]["loss0"]

    colab.boot()  # a fresh VM: the lab, its database, checkpoints and token are gone
    with colab.session(nb) as printed:
        assert (colab.data / "token").read_text().strip() == token, "the same token"
        assert "restored the server state saved at" in colab.log()
        assert f"running: {RUN_KEY}" in printed[0]
        assert "device check on" in printed[0], "this VM's own check, printed before it trains"
        api = colab.api()
        runs = api.get("/api/runs").json()
        assert [r["id"] for r in runs] == [run_id], "the same run, not a second one"
        assert runs[0]["note"] == "from VM 1" and runs[0]["tags"] == ["colab"]
        colab.wait(
            lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"),
            300,
            "the resumed run to finish",
        )
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "succeeded", (run.get("error"), colab.log())
        assert run["device_check"]["attempt"] == run["attempt"] == 2
        start = next(i for i in run["checklist"] if i["key"] == "train.start")
        assert start["detail"] == f"resumed from step {last} (backup folder {backup_dir})"
        export = api.get(f"/api/runs/{run_id}/export").json()
        loss = export["metrics"]["loss0"]
        assert [s for s, _, _ in loss] == list(range(10, total + 1, 10)), "every logged step exactly once"
        restored = [p for p in backed_up if p[0] <= last]
        assert [p for p in loss if p[0] <= last] == restored, "the curves up to the backup are the backup's"
        steps = [c["step"] for c in export["checkpoints"]]
        assert len(steps) == len(set(steps)), "each checkpoint listed once"
        assert max(manifest_steps(backup_dir)) == total
