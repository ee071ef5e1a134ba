"""The server's event loop: uvloop when installed (the default), asyncio's on
request, and a clear refusal of uvloop where it is missing."""

from __future__ import annotations

import asyncio

import pytest

from server import loop
from server.settings import Settings


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert loop.run(_loop_type(), "auto").startswith("uvloop")


def test_asyncio_can_be_chosen() -> None:
    assert loop.run(_loop_type(), "asyncio").startswith("asyncio")


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "uvloop_available", lambda: False)
    assert loop.run(_loop_type(), "auto").startswith("asyncio")


def test_choosing_uvloop_where_it_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.settings as settings_module

    monkeypatch.setattr(settings_module, "uvloop_available", lambda: False)
    with pytest.raises(ValueError, match="uvloop is not installed"):
        Settings(event_loop="uvloop")
