"""Token redaction in worker messages: tokens go, file paths stay readable."""

from __future__ import annotations

import pytest

from worker.backup import redact

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"[:34]


def test_hub_tokens_are_masked_but_paths_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    trace = (
        'File "/usr/lib/python3/site-packages/huggingface_hub/hf_api.py", line 9, in create_repo\n'
        f"401 Unauthorized for Authorization: Bearer {TOKEN}; see hf_hub_download and my_hf_file.py"
    )
    out = redact(trace)
    assert TOKEN not in out and "Bearer hf_***;" in out
    assert "huggingface_hub/hf_api.py" in out and "hf_hub_download" in out and "my_hf_file.py" in out


def test_the_workers_own_token_is_masked_whatever_its_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "old-style-api-token-0123")
    assert redact("sent old-style-api-token-0123 to the Hub") == "sent *** to the Hub"
