"""benchmarks/common.py: a benchmark's record names the code it measured."""

from __future__ import annotations

import importlib
import sys

from helpers import REPO

sys.path.insert(0, str(REPO))

import benchmarks.common  # noqa: E402


def test_the_record_names_the_commit_the_run_began_at_and_a_change_during_it(monkeypatch):
    monkeypatch.setenv("UNET_COMMIT", "1111111aaaa")
    common = importlib.reload(benchmarks.common)  # a benchmark starting
    assert common.commit() == "1111111"

    monkeypatch.setenv("UNET_COMMIT", "2222222bbbb+dirty")  # the checkout moves on while it runs
    try:
        assert common.commit() == "1111111 (by the end of the run: 2222222+dirty)"
    finally:  # later tests in this process get the module as their own start made it
        monkeypatch.undo()
        importlib.reload(benchmarks.common)
