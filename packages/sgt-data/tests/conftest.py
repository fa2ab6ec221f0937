"""Shared test helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of a session, from Linux /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.fixture
def session_members() -> Callable[[int, float], list[int]]:
    """``f(sid, wait)``: the live processes of session ``sid`` (e.g. a conversion started with
    ``start_new_session=True`` and its workers), polled for up to ``wait`` seconds until none
    is left."""

    def members(sid: int, wait: float = 0.0) -> list[int]:
        deadline = time.monotonic() + wait
        while (alive := _session_members(sid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return alive

    return members
