"""Tunnel choice and failure paths, with the providers replaced (no network here)."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app import tunnel


def test_chosen_provider_url_is_printed_and_stored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    calls: list[int] = []

    def ngrok(port: int) -> str:
        calls.append(port)
        return "https://abc.ngrok.app"

    fake: dict[str, Callable[[int], str]] = {"ngrok": ngrok}
    assert tunnel.open_tunnel("ngrok", 8123, tmp_path, fake) == "https://abc.ngrok.app"
    assert calls == [8123]
    assert (tmp_path / "tunnel_url").read_text().strip() == "https://abc.ngrok.app"
    assert "https://abc.ngrok.app" in capsys.readouterr().out


def test_failed_tunnel_keeps_local_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def broken(port: int) -> str:
        raise tunnel.TunnelError("no binary")

    assert tunnel.open_tunnel("cloudflared", 8000, tmp_path, {"cloudflared": broken}) is None
    out = capsys.readouterr().out
    assert "did not start: no binary" in out and "still runs locally on port 8000" in out
    assert not (tmp_path / "tunnel_url").exists()


def test_unknown_tunnel_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert tunnel.open_tunnel("frp", 8000, tmp_path) is None
    assert "unknown tunnel 'frp'" in capsys.readouterr().out


def test_colab_outside_colab_says_what_to_do() -> None:
    with pytest.raises(tunnel.TunnelError, match="only inside a Colab notebook"):
        tunnel.colab(8000)


def test_ngrok_without_authtoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(tunnel.TunnelError, match="pyngrok|NGROK_AUTHTOKEN"):
        tunnel.ngrok(8000)


def test_cloudflared_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel.shutil, "which", lambda name: None)
    with pytest.raises(tunnel.TunnelError, match="cloudflared is not installed"):
        tunnel.cloudflared(8000)


def test_cloudflared_url_is_parsed_from_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "cloudflared"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, time\n"
        "print('INF Requesting new quick Tunnel', flush=True)\n"
        "print('INF |  https://quiet-river-42.trycloudflare.com  |', flush=True)\n"
        "time.sleep(30)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert tunnel.cloudflared(8000, binary=str(fake), timeout=10) == "https://quiet-river-42.trycloudflare.com"


def test_cloudflared_without_url_times_out(tmp_path: Path) -> None:
    fake = tmp_path / "cloudflared"
    fake.write_text(f"#!{sys.executable}\nprint('ERR failed to connect', flush=True)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(tunnel.TunnelError, match="no trycloudflare.com URL"):
        tunnel.cloudflared(8000, binary=str(fake), timeout=5)
