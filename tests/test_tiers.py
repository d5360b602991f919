"""The tier check of tests/conftest.py, in a pytest session of its own (pytester, in process): a test
with no tier mark, or with two, fails the run before any test runs; otherwise the tiers run in order."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFTEST = Path(__file__).with_name("conftest.py")


def session(pytester: pytest.Pytester, **modules: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(**modules)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-v")


def test_a_test_without_exactly_one_tier_fails_the_run(pytester: pytest.Pytester) -> None:
    result = session(
        pytester,
        test_none="def test_forgotten():\n    pass\n",
        test_two=(
            "import pytest\n\npytestmark = pytest.mark.unit\n\n\n"
            "@pytest.mark.slow\ndef test_both():\n    pass\n\n\ndef test_fine():\n    pass\n"
        ),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*every test needs exactly one tier mark*",
            "*test_none.py::test_forgotten: none",
            "*test_two.py::test_both: slow, unit",
        ]
    )
    assert "test_fine" not in result.stderr.str()
    result.assert_outcomes()  # nothing ran


def test_the_tiers_run_unit_then_service_then_slow(pytester: pytest.Pytester) -> None:
    result = session(
        pytester,
        test_a=(
            "import pytest\n\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n\n\n"
            "@pytest.mark.service\ndef test_service():\n    pass\n"
        ),
        test_b="import pytest\n\npytestmark = pytest.mark.unit\n\n\ndef test_unit():\n    pass\n",
    )
    result.assert_outcomes(passed=3)
    ran = [
        line.split("::")[1].split()[0] for line in result.outlines if "::test_" in line and "PASSED" in line
    ]
    assert ran == ["test_unit", "test_service", "test_slow"]
