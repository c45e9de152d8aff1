"""One percent formatter (mstl.edge.core.metrics.percent / percent_with_ci) for report.md, bench.md, the /device
notes and the terminal (issue 22): the exact text each of them printed before."""

import pytest

from mstl.edge.core.metrics import percent, percent_with_ci


@pytest.mark.parametrize("v, unit, text", [(0.91234, "%", "91.2%"), (1.0, "%", "100.0%"), (0.0, "%", "0.0%"),
                                           (0.00049, "%", "0.0%"), (0.6925, "", "69.2"), (None, "%", "-"),
                                           (None, "", "-")])
def test_percent(v, unit, text):
    assert percent(v, unit) == text


def test_percent_with_ci():
    assert percent_with_ci(0.91234, (0.85, 0.95555)) == "91.2% [85.0, 95.6]"
    assert percent_with_ci(0.98765, [0.9, 0.99], unit="") == "98.8 [90.0, 99.0]"
    assert percent_with_ci(None, (0.1, 0.2)) == "-"
    assert percent_with_ci(0.5, None) == "50.0%"  # a rate whose interval was never computed


def test_the_callers_use_it():
    """The report's table cells (no unit: the header has it) and rate cells with their interval."""
    from mstl.report.build import _pct, _rate
    assert _pct(0.755) == "75.5" and _pct(None) == "-"
    assert _rate({"sensitivity": 0.8, "sensitivity_ci95": [0.7, 0.9]}, "sensitivity") == "80.0% [70.0, 90.0]"
    assert _rate({"sensitivity": None, "sensitivity_ci95": None}, "sensitivity") == "-"
