"""Colab's secrets: the test sets them as JSON in FAKE_COLAB_SECRETS (none by default, so
a run backed up to a folder must not need a Hugging Face token); a missing one fails the
way Colab fails."""

from __future__ import annotations

import json
import os


class SecretNotFoundError(Exception):
    pass


def get(key: str) -> str:
    secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS") or "{}")
    if key not in secrets:
        raise SecretNotFoundError(f"Secret {key} does not exist.")
    return secrets[key]
