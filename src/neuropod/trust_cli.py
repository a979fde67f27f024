"""``neuropod keygen | sign | verify`` and the trust lines of ``neuropod inspect``."""

from __future__ import annotations

import os
import sys
from typing import Any, List, Tuple

import click

from ._cli_errors import user_errors
from .errors import NeuropodError, TrustError

__all__ = ["COMMANDS", "trust_lines"]


def trust_lines(package: Any) -> List[Tuple[str, str]]:
    """``(label, text)`` lines for ``neuropod inspect``: carried code, signature, isolation under the policy."""
    from .trust import TrustPolicy, carried_code, choose_isolation, signature_path

    code = carried_code(package)
    lines = [("code", "yes: " + "; ".join(code) if code else "none (data and framework artifacts only)")]
    signature = signature_path(package.source)
    policy = TrustPolicy.parse(None)  # a malformed NEUROPOD_TRUST is the user's error (exit 2), not a refusal
    try:
        level, decision = choose_isolation(package, None, policy)
        if decision.signed_by:
            signed = f"signed by trusted key {decision.signed_by} ({signature})"
        else:
            signed = f"present, not checked (no trusted keys given) ({signature})" if signature.exists() else "unsigned"
        isolation = f"{level} ({decision.reason})"
    except NeuropodError as exc:
        signed, isolation = f"REFUSED: {exc}", "refused by the trust policy"
    lines.append(("signature", signed))
    if not os.environ.get("NEUROPOD_TRUST"):
        isolation += "; NEUROPOD_TRUST can require a sandbox or container"
    lines.append(("isolation", isolation))
    return lines


@click.command()
@click.argument("private_key", type=click.Path(dir_okay=False))
@user_errors
def keygen(private_key: str) -> None:
    """Make an ed25519 key pair: PRIVATE_KEY (PEM, mode 0600) and PRIVATE_KEY.pub."""
    from .trust import generate_key

    private, public = generate_key(private_key)
    click.echo(f"private key: {private}\npublic key:  {public}")


@click.command()
@click.argument("path")
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False), help="ed25519 private key.")
@user_errors
def sign(path: str, key: str) -> None:
    """Sign package PATH's manifest; writes PATH.sig next to it."""
    from .package import open_package
    from .trust import sign_package

    package = open_package(path, verify=True)  # sign only what matches its manifest
    click.echo(f"signed: {sign_package(package, key)}")


@click.command()
@click.argument("path")
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="Trusted public key file or directory (repeatable).",
)
@user_errors
def verify(path: str, keys: Tuple[str, ...]) -> None:
    """Check package PATH's files against its manifest and its signature against trusted keys (exit 1 if not).

    A key that cannot be read exits 2, as every user error does.
    """
    from .package import open_package
    from .trust import load_public_keys, signature_path, verify_signature

    package = open_package(path, verify=True)
    trusted = load_public_keys(keys)  # an unreadable key is the user's error (exit 2), not a failed check
    try:
        signer = verify_signature(package, trusted)
    except TrustError as exc:
        click.echo(f"NOT VERIFIED: {exc}", err=True)
        sys.exit(1)
    if signer is None:
        click.echo(f"NOT VERIFIED: {path} is unsigned (no {signature_path(package.source)})", err=True)
        sys.exit(1)
    click.echo(f"verified: {path} is signed by trusted key {signer}")


COMMANDS = (keygen, sign, verify)
