"""``neuropod.integrations.ray`` is light: importing it imports no Ray; the Serve deployment does."""

from __future__ import annotations

import subprocess
import sys

from conftest import require


def test_importing_the_integration_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "import neuropod.integrations.ray as integration\n"
        "assert 'ray' not in sys.modules, 'importing the integration imported ray'\n"
        "integration.neuropod_deployment\n"
        "assert 'ray' in sys.modules\n"
    )
    require("ray")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_an_unknown_name_says_so() -> None:
    import pytest

    import neuropod.integrations.ray as integration

    with pytest.raises(AttributeError, match="no attribute 'Deployment'"):
        integration.Deployment  # noqa: B018
