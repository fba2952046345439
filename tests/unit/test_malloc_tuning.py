"""Pinning glibc's mmap threshold: applied on glibc, skipped when told to or when the env already says."""

from __future__ import annotations

import platform
import sys

import pytest

from nanobatch.workers.malloc_tuning import pin_mmap_threshold


def test_zero_leaves_the_default() -> None:
    assert pin_mmap_threshold(0) is False


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert pin_mmap_threshold(1 << 20) is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert pin_mmap_threshold(1 << 20) is True
