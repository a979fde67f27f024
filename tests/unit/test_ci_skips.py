"""CI must not skip over a missing piece: every test that needs one either runs or fails there.

Tests that need a framework, a command or an interpreter go through
``conftest.require`` / ``require_command`` / ``missing``, which fail under
``NEUROPOD_REQUIRE_FRAMEWORKS=1`` instead of skipping; these checks keep new
tests from slipping back to a plain skip.
"""

import re
from pathlib import Path

from conftest import LEGACY_FIXTURES, REPO

TESTS = REPO / "tests"

#: Ways of skipping that no NEUROPOD_REQUIRE_FRAMEWORKS=1 can turn into a failure.
HIDDEN_SKIPS = re.compile(
    r"importorskip\(|skipif\(\s*shutil\.which|skipif\(\s*not OTHER_PYTHON|skip\(\"shared/fixtures"
)


def test_no_test_skips_on_a_missing_piece():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if HIDDEN_SKIPS.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "use conftest.require / require_command / missing instead:\n" + "\n".join(offenders)


def test_legacy_fixtures_are_in_the_repository():
    # CI clones the repository alone: the original's packages must come with it.
    assert LEGACY_FIXTURES.is_relative_to(REPO)
    assert {p.name for p in LEGACY_FIXTURES.iterdir() if p.is_dir()} >= {
        "tf_addition_model",
        "torchscript_addition_model",
        "torchscript_dict_with_union_value_type_model",
    }


def test_dev_script_installs_python39_instead_of_skipping_its_run():
    script = (REPO / "scripts" / "dev.sh").read_text(encoding="utf-8")
    assert 'uv" python install 3.9' in script
    assert "skipping the Python 3.9 run" not in script
