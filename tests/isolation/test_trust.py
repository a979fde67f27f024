"""The trust model: what carries code, ed25519 signatures, and the policy that requires isolation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from neuropod.cli import main
from neuropod.errors import OptionError, TrustError
from neuropod.loader import load_neuropod
from neuropod.package import open_package
from neuropod.packagers import create_placeholder_neuropod
from neuropod.trust import TrustPolicy, carried_code, generate_key, sign_package, signature_path, verify_signature

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ope"))
from ope_models import make_tool_model  # noqa: E402

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require, require_command  # noqa: E402


@pytest.fixture
def keys(tmp_path):
    require("cryptography")
    return generate_key(tmp_path / "signer")


@pytest.fixture
def code_package(tmp_path):
    return make_tool_model(tmp_path)


@pytest.fixture
def data_package(tmp_path):
    return create_placeholder_neuropod(tmp_path / "placeholder.zip", "p", ADDITION_INPUTS, ADDITION_OUTPUTS)


def test_carried_code_names_python_code_and_nothing_for_a_data_package(code_package, data_package):
    assert carried_code(open_package(code_package))[0].startswith("Python code (")
    assert carried_code(open_package(data_package)) == []


def test_sign_and_verify_and_tampering(code_package, keys, tmp_path):
    private, public = keys
    package = open_package(code_package)
    path = sign_package(package, private)
    assert path == signature_path(code_package) and path.exists()
    assert verify_signature(package, [_public(public)]) is not None
    stranger_private, stranger_public = generate_key(tmp_path / "stranger")
    with pytest.raises(TrustError, match="does not verify with any of the 1 trusted key"):
        verify_signature(package, [_public(stranger_public)])
    record = json.loads(path.read_text())
    record["signature"] = record["signature"][::-1]
    path.write_text(json.dumps(record))
    with pytest.raises(TrustError):
        verify_signature(package, [_public(public)])


def _public(path):
    from neuropod.trust import load_public_keys

    return load_public_keys([path])[0]


def test_the_policy_refuses_weaker_isolation_and_picks_the_minimum(code_package, data_package, keys, monkeypatch):
    require_command("bwrap")
    monkeypatch.setenv("NEUROPOD_TRUST", "code=sandbox")
    with pytest.raises(TrustError, match=r"requires isolation='sandbox'.*carries Python code"):
        load_neuropod(code_package, isolation="process")
    with load_neuropod(code_package) as model:  # isolation=None: the policy's minimum
        assert model.executor.isolation.level == "sandbox"
    with load_neuropod(data_package) as model:  # no code: no minimum
        assert type(model.executor).__name__ == "InProcessExecutor"


def test_a_package_signed_by_a_listed_key_needs_no_isolation(code_package, keys):
    private, public = keys
    sign_package(open_package(code_package), private)
    policy = f"code=sandbox,unsigned=container,keys={public}"
    with load_neuropod(code_package, trust=policy) as model:
        assert type(model.executor).__name__ == "InProcessExecutor"
    signature_path(code_package).unlink()
    with pytest.raises(TrustError, match=r"requires isolation='container'.*is not signed"):
        load_neuropod(code_package, trust=policy, isolation="sandbox")


def test_bad_policies_are_named():
    with pytest.raises(OptionError, match="code must be one of"):
        TrustPolicy.parse("code=vm")
    with pytest.raises(OptionError, match="unknown item 'cod'"):
        TrustPolicy.parse("cod=sandbox")


def test_cli_keygen_sign_verify_and_inspect(code_package, tmp_path):
    require("cryptography")
    runner = CliRunner()
    key = tmp_path / "cli-key"
    assert runner.invoke(main, ["keygen", str(key)]).exit_code == 0
    result = runner.invoke(main, ["verify", str(code_package), "--key", f"{key}.pub"])
    assert result.exit_code == 1 and "unsigned" in result.output
    assert runner.invoke(main, ["sign", str(code_package), "--key", str(key)]).exit_code == 0
    result = runner.invoke(main, ["verify", str(code_package), "--key", f"{key}.pub"])
    assert result.exit_code == 0 and "verified" in result.output
    # The private key where the public one belongs: the user's error, not "not verified".
    result = runner.invoke(main, ["verify", str(code_package), "--key", str(key)])
    assert result.exit_code == 2 and "Error: TrustError: trusted key" in result.output
    assert "NOT VERIFIED" not in result.output
    result = runner.invoke(main, ["inspect", str(code_package)], env={"NEUROPOD_TRUST": "code=sandbox"})
    assert result.exit_code == 0
    assert "code:      yes: Python code" in result.output
    assert "isolation: sandbox (carries Python code" in result.output
    result = runner.invoke(main, ["sign", str(tmp_path / "missing.zip"), "--key", str(key)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    # A malformed policy is named as the user's error, not reported as the policy refusing the package.
    result = runner.invoke(main, ["inspect", str(code_package)], env={"NEUROPOD_TRUST": "code=sandbx"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: OptionError: NEUROPOD_TRUST: code must be one of process, sandbox, container, got 'sandbx'"
    )
