"""The property tests' example counts (tests.strategies.COUNTS) in pytest's terminal summary."""

import json
import os

from tests.strategies import COUNTS


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("property examples run per op[backend]")
    for key, n in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{key}: {n}")
    path = os.environ.get("LLMKERN_PROPERTY_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(COUNTS), f, indent=1, sort_keys=True)
