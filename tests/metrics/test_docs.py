"""docs/metrics.md lists every conventional metric, with its kind and help text."""

from __future__ import annotations

import pathlib
import re

from scalekit.metrics import METRICS

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(scalekit_[a-z_]+)` \| (counter|gauge) \| (.*) \|$", re.MULTILINE)


def test_the_guide_lists_every_metric_as_the_code_names_it() -> None:
    listed = {name: (kind, help_text) for name, kind, help_text in ROW.findall(PAGE.read_text())}
    assert listed == METRICS
