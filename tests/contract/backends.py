"""The backends the contract runs on, and per-backend marks for known defects."""

from __future__ import annotations

from collections.abc import Collection

import pytest

BACKENDS = ("memory", "postgres")

#: A strict xfail: once the defect is fixed the test passes, and the mark must go.
LEAVES_A_TRACE = pytest.mark.xfail(
    strict=True, reason="a refused write leaves a trace: being fixed"
)


def on_backends(*, leaves_a_trace: Collection[str] = ()) -> pytest.MarkDecorator:
    """Run on every backend as usual, expecting the named ones to fail strictly.

    Parametrises the ``store`` fixture itself (indirectly), so the test ids stay
    ``[memory]`` and ``[postgres]``."""
    unknown = set(leaves_a_trace) - set(BACKENDS)
    assert not unknown, f"no such backend: {sorted(unknown)}"
    return pytest.mark.parametrize(
        "store",
        [
            pytest.param(
                backend, id=backend, marks=[LEAVES_A_TRACE] if backend in leaves_a_trace else []
            )
            for backend in BACKENDS
        ],
        indirect=True,
    )
