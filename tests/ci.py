"""One reading of the CI environment for the whole suite.

A test that needs something the README's test command installs (ImageNet weights package, PostgreSQL,
Chromium, Ray) skips with the reason on a developer's machine, but fails under CI, where that thing must be
there: a silently skipped test would hide a broken install step. CI sets CI=true; '1' and 'yes' count too.
"""
import os

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str, installed_by: str = "scripts/test.sh"):
    """Skip (outside CI) or fail (in CI) because a piece the test command installs is missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI: {installed_by} installs it, so this test must run here)")
    pytest.skip(reason)
