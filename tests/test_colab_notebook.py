"""The Colab notebook is valid, and its code uses only settings and routes that exist."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from dlite.config import FIELDS

NOTEBOOK = Path(__file__).resolve().parents[1] / "colab" / "DiffuserLite_Lab.ipynb"


def test_notebook_cells_parse_and_use_real_settings() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == 2, "one setup cell and one link cell"
    for source in code:
        ast.parse(source)
    setup = code[0]
    assert 'userdata.get("HF_TOKEN")' in setup and '"dlite", "up"' in setup
    for key in ("seed", "hub_repo"):
        assert f'"{key}"' in setup and key in FIELDS
    assert "proxyPort(8000)" in code[1]
