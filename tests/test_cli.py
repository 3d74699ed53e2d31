"""The `unet` command tells the user's mistakes from our bugs."""

import pytest

import unet.tables
from unet.cli import main
from unet.errors import UsageError


def test_a_usage_error_is_one_line_and_exit_status_2(monkeypatch, capsys):
    def wrong_input(args):
        raise UsageError("results/x.csv: column 'rand' is missing")

    monkeypatch.setattr(unet.tables, "run", wrong_input)
    assert main(["tables", "--out", "tables"]) == 2
    assert capsys.readouterr().err == "unet tables: error: results/x.csv: column 'rand' is missing\n"


def test_any_other_value_error_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(unet.tables, "run", bug)
    with pytest.raises(ValueError, match="broadcast"):
        main(["tables", "--out", "tables"])
