"""pytest plugin used by bench/gpu_check.py (``-p gpu_check_plugin``): one record per test.

For every test it records the outcome (passed, failed, error, skipped, xfailed, xpassed), whether
the test is marked ``gpu``, and the skip reason or the last line of the failure, and writes them
as JSON to the file named by ``$GPU_CHECK_RECORDS`` when the session ends. gpu_check.py uses it to
count the ``gpu`` tests that were skipped, which the junit XML cannot tell (it has no markers).
The marker travels on the report as a user property (so it also reaches the junit XML, and
pytest-xdist's controller): a keyword test would also match a parameter id such as ``[gpu]``.
"""

from __future__ import annotations

import json
import os

import pytest

_RECORDS: dict[str, dict] = {}
GPU_PROPERTY = ("marker", "gpu")
_RANK = {"passed": 0, "xpassed": 1, "skipped": 2, "xfailed": 2, "failed": 3, "error": 4}


def _outcome(report) -> str:
    if report.when != "call":
        return "error" if report.failed else ("skipped" if report.skipped else "passed")
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _detail(report) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2])
    lines = [line for line in str(getattr(report, "longreprtext", longrepr)).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    return ((errors[0] if errors else "") + " ... " + lines[-1] if lines else "")[:500]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if item.get_closest_marker("gpu") is not None and GPU_PROPERTY not in report.user_properties:
        report.user_properties.append(GPU_PROPERTY)


def pytest_runtest_logreport(report):
    gpu = GPU_PROPERTY in [tuple(p) for p in report.user_properties]
    record = _RECORDS.setdefault(report.nodeid, {"outcome": None, "gpu": gpu, "detail": ""})
    outcome = _outcome(report)
    if report.when == "call" or outcome != "passed":  # a passing setup or teardown says nothing
        if record["outcome"] is None or _RANK[outcome] > _RANK[record["outcome"]]:
            record["outcome"], record["detail"] = outcome, _detail(report)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GPU_CHECK_RECORDS")
    if path and not hasattr(session.config, "workerinput"):  # the xdist controller (or no xdist) writes
        with open(path, "w") as f:
            json.dump({"exitstatus": int(exitstatus),
                       "tests": {k: {**v, "outcome": v["outcome"] or "passed"} for k, v in _RECORDS.items()}}, f)
