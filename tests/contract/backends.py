"""The backends the contract runs on, and per-backend strict xfails for known defects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

import pytest

from storage.interface import EventStore

BACKENDS = ("memory", "postgres")

#: A call on a store and a stream name, for tests that try several calls alike.
StoreCall = Callable[[EventStore, str], Awaitable[object]]

#: The defect of CONTRACT.md's "A refused write changes nothing" still being fixed.
LEAVES_A_TRACE = "a refused write leaves a trace: being fixed"
#: storage/page_tokens.py checks a position with str.isdigit(), which accepts digits
#: int() refuses (superscripts): int() then raises ValueError, not InvalidPageToken.
TOKEN_DIGITS_NOT_CHECKED = "a position token int() cannot read escapes as ValueError"
#: A well-formed token naming a value PostgreSQL cannot take (a position beyond
#: bigint, a name with NUL) reaches the query and fails as a generic StorageError.
FORGED_TOKEN_REACHES_THE_DATABASE = (
    "a forged page token fails in the database, not as InvalidPageToken"
)


def fails_on(backends: Collection[str], reason: str) -> pytest.MarkDecorator:
    """Run on every backend, expecting a strict failure on ``backends``: once the
    defect is fixed the test passes there, and this mark must go.

    Parametrises the ``store`` fixture itself (indirectly), so the test ids stay
    ``[memory]`` and ``[postgres]``."""
    unknown = set(backends) - set(BACKENDS)
    assert not unknown, f"no such backend: {sorted(unknown)}"
    return pytest.mark.parametrize(
        "store",
        [
            pytest.param(
                backend,
                id=backend,
                marks=[pytest.mark.xfail(strict=True, reason=reason)]
                if backend in backends
                else [],
            )
            for backend in BACKENDS
        ],
        indirect=True,
    )
