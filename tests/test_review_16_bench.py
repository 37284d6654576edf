"""Review of ``scalekit bench`` (issue 16): a ``--json`` that cannot be written is
refused before minutes of timing, not after them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scalekit.cli import main


def test_a_json_path_that_is_a_folder_is_refused_before_any_comparison_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[Any] = []
    monkeypatch.setattr("scalekit._bench_suite.run_blocks", lambda *args: ran.append(args) or [])
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--json", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is a folder" in capsys.readouterr().err
    assert ran == []
