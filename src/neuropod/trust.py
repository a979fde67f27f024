"""Which packages carry code, who signed them, and what isolation they must run in.

A package *carries code* when loading it runs code its author wrote: Python
code (the ``python`` platform, ``0/code``), custom ops (shared libraries in
``0/ops``) or a pickle (``test_data.pkl`` and other ``*.pkl``). Such a
package runs with the loader's full rights unless it is isolated.

A package is *signed* when ``<package>.sig`` (next to the zip or directory)
holds an ed25519 signature of its ``manifest.json``; the manifest lists the
sha256 of every other file, so the signature covers the whole package.
``neuropod keygen`` / ``sign`` / ``verify`` make and check them (through the
``cryptography`` library, ``pip install "neuropod-python[trust]"``).

A **trust policy** (``load_neuropod(..., trust=...)`` or ``NEUROPOD_TRUST``)
names the weakest isolation allowed::

    NEUROPOD_TRUST="code=sandbox,unsigned=container,keys=/etc/neuropod/keys"

* ``code=LEVEL``: packages that carry code and are not signed by a listed key;
* ``unsigned=LEVEL``: any package not signed by a listed key;
* ``keys=PATHS``: public keys (PEM files, or directories of ``*.pub``/``*.pem``),
  separated by ``:``.

Levels: ``process`` (also in-process), ``sandbox``, ``container``. A package
signed by a listed key has no minimum. With ``isolation=None`` the loader
picks the weakest level the policy allows; an explicit weaker one raises
:class:`~neuropod.errors.TrustError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from .errors import OptionError, TrustError
from .isolation.options import ISOLATION_LEVELS
from .options import Options, setting
from .package import Package, layout

__all__ = [
    "TrustPolicy",
    "TrustOptions",
    "TRUST_OPTIONS",
    "carried_code",
    "signature_path",
    "generate_key",
    "sign_package",
    "verify_signature",
    "required_isolation",
]

LEVEL_RANK = {level: rank for rank, level in enumerate(ISOLATION_LEVELS)}
SIGNATURE_VERSION = 1
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
_CODE_PLATFORMS = ("python", "pytorch")


def carried_code(package: Package) -> List[str]:
    """What in ``package`` runs code when it is loaded; empty when nothing does."""
    found = []
    files = package.files()
    code = [f for f in files if f.startswith(layout.CODE_DIR + "/")]
    if code or package.config.platform in _CODE_PLATFORMS:
        found.append(f"Python code ({len(code)} files in {layout.CODE_DIR})")
    if package.config.custom_ops:
        found.append("custom ops (" + ", ".join(package.config.custom_ops) + ")")
    pickles = [f for f in files if f.lower().endswith(_PICKLE_SUFFIXES)]
    if pickles:
        found.append("pickles (" + ", ".join(pickles) + ")")
    return found


def signature_path(package_path: Union[str, os.PathLike]) -> Path:
    """Where the detached signature of a package lives: ``model.zip`` -> ``model.zip.sig``."""
    path = Path(os.fspath(package_path))
    return path.with_name(path.name.rstrip("/") + ".sig")


def _crypto() -> Any:
    from .extras import require

    require("cryptography", "trust", "signing and verifying packages")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def _manifest_bytes(package: Package) -> bytes:
    path = package.root / layout.MANIFEST
    if not path.exists():
        raise TrustError(f"{package.source}: has no {layout.MANIFEST}, so there is nothing to sign or verify")
    return path.read_bytes()


def key_id(public_key: Any) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(private_path: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Write a new ed25519 key pair: ``private_path`` (PEM, mode 0600) and ``private_path.pub``."""
    serialization, ed25519 = _crypto()
    private_path = Path(os.fspath(private_path))
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise TrustError(f"{path}: exists already; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def _load_private(path: Union[str, os.PathLike]) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(os.fspath(path)).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TrustError(f"{path}: expected an ed25519 private key, got {type(key).__name__}")
    return key


def load_public_keys(paths: Sequence[Union[str, os.PathLike]]) -> List[Any]:
    """Public keys from PEM files, or from ``*.pub`` / ``*.pem`` files in directories."""
    serialization, ed25519 = _crypto()
    keys = []
    for entry in paths:
        entry = Path(os.fspath(entry))
        files = sorted(p for p in entry.iterdir() if p.suffix in (".pub", ".pem")) if entry.is_dir() else [entry]
        for file in files:
            try:
                key = serialization.load_pem_public_key(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise TrustError(f"trusted key {file}: not a readable PEM public key ({exc})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise TrustError(f"trusted key {file}: expected an ed25519 public key, got {type(key).__name__}")
            keys.append(key)
    return keys


def sign_package(package: Package, private_key_path: Union[str, os.PathLike]) -> Path:
    """Sign ``package``'s manifest with an ed25519 key; write and return ``<package>.sig``."""
    key = _load_private(private_key_path)
    signature = key.sign(_manifest_bytes(package))
    record = {
        "signature_version": SIGNATURE_VERSION,
        "algorithm": "ed25519",
        "signed": layout.MANIFEST,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    path = signature_path(package.source)
    path.write_text(json.dumps(record, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    return path


def verify_signature(package: Package, public_keys: Sequence[Any]) -> Optional[str]:
    """The id of the listed key that signed ``package``, or None when it is unsigned.

    Raises:
        TrustError: a signature exists but is malformed or made by no listed key
            (the package changed since it was signed, or someone else signed it).
    """
    path = signature_path(package.source)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
        claimed = str(record.get("key_id", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{path}: not a neuropod signature file ({exc})") from None
    if record.get("signature_version") != SIGNATURE_VERSION or record.get("algorithm") != "ed25519":
        raise TrustError(f"{path}: expected signature_version 1 with ed25519, got {record.get('signature_version')!r}")
    from cryptography.exceptions import InvalidSignature

    manifest = _manifest_bytes(package)
    for key in public_keys:
        try:
            key.verify(signature, manifest)
        except InvalidSignature:
            continue
        return key_id(key)
    raise TrustError(
        f"{path}: the signature (key {claimed or 'unknown'}) does not verify with any of the "
        f"{len(public_keys)} trusted key(s): the package changed since signing, or another key signed it"
    )


@dataclass(frozen=True)
class TrustPolicy:
    """The weakest isolation allowed for packages that carry code, and for unsigned ones.

    Attributes:
        code: minimum level for packages that carry code and are not signed by a listed key.
        unsigned: minimum level for every package not signed by a listed key.
        keys: trusted public key files or directories.
    """

    code: str = "process"
    unsigned: str = "process"
    keys: Tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, value: Any, name: str = "trust") -> TrustPolicy:
        """A policy from a TrustPolicy, a dict, or a ``"code=sandbox,unsigned=container,keys=a:b"`` string."""
        if value is None:
            value = os.environ.get("NEUROPOD_TRUST", "")
            name = "NEUROPOD_TRUST"
        if isinstance(value, TrustPolicy):
            return value
        if isinstance(value, str):
            items = {}
            for part in filter(None, (p.strip() for p in value.split(","))):
                key, sep, text = part.partition("=")
                if not sep:
                    raise OptionError(f"{name}: expected key=value items (code=, unsigned=, keys=), got {part!r}")
                items[key.strip()] = text.strip()
            value = items
        if not isinstance(value, dict):
            raise OptionError(f"{name}: expected a TrustPolicy, a dict or a 'code=sandbox,...' string, got {value!r}")
        unknown = sorted(set(value) - {"code", "unsigned", "keys"})
        if unknown:
            raise OptionError(f"{name}: unknown item {unknown[0]!r}; expected code, unsigned, keys")
        levels = {}
        for key in ("code", "unsigned"):
            level = value.get(key, "process")
            if level not in LEVEL_RANK:
                raise OptionError(f"{name}: {key} must be one of {', '.join(LEVEL_RANK)}, got {level!r}")
            levels[key] = level
        keys = value.get("keys", ())
        if isinstance(keys, str):
            keys = tuple(k for k in keys.split(os.pathsep) if k)
        return cls(levels["code"], levels["unsigned"], tuple(os.fspath(k) for k in keys))

    @property
    def strict(self) -> bool:
        return self.code != "process" or self.unsigned != "process"


@dataclass(frozen=True)
class TrustDecision:
    """What the policy says of one package."""

    code: List[str]
    signed_by: Optional[str]
    minimum: str
    reason: str


def required_isolation(package: Package, policy: TrustPolicy, verified: bool = True) -> TrustDecision:
    """The weakest isolation ``policy`` allows for ``package``, and why.

    ``verified``: the package's files were checked against its manifest (a
    signature of the manifest says nothing of files nobody checked).
    """
    code = carried_code(package)
    signed_by = None
    if policy.keys and verified:
        signed_by = verify_signature(package, load_public_keys(policy.keys))
    if signed_by is not None:
        return TrustDecision(code, signed_by, "process", f"signed by trusted key {signed_by}")
    minimum, reason = "process", "no policy applies"
    if LEVEL_RANK[policy.unsigned] > LEVEL_RANK[minimum]:
        minimum, reason = policy.unsigned, f"is not signed by a trusted key (policy unsigned={policy.unsigned})"
    if code and LEVEL_RANK[policy.code] > LEVEL_RANK[minimum]:
        minimum, reason = policy.code, f"carries {'; '.join(code)} (policy code={policy.code})"
    return TrustDecision(code, None, minimum, reason)


def choose_isolation(
    package: Package, requested: Optional[str], policy: TrustPolicy, verified: bool = True
) -> Tuple[str, TrustDecision]:
    """The isolation to load ``package`` with: ``requested``, or the policy's minimum when None.

    Raises:
        TrustError: ``requested`` is weaker than the policy allows (names why and how to load it).
    """
    decision = required_isolation(package, policy, verified)
    level = requested or decision.minimum
    if LEVEL_RANK[level] < LEVEL_RANK[decision.minimum]:
        raise TrustError(
            f"{package.source}: the trust policy requires isolation={decision.minimum!r} or stronger "
            f"because it {decision.reason}; it was asked to load with isolation={level!r}"
        )
    return level, decision


def _policy(name: str, value: Any) -> Optional[TrustPolicy]:
    return None if value is None else TrustPolicy.parse(value, f"option {name!r}")


@dataclass(frozen=True)
class TrustOptions(Options):
    """The trust option of every package load."""

    REMOTE = "the server applies its own trust policy to the packages it loads"

    trust: Optional[TrustPolicy] = setting(
        None,
        check=_policy,
        doc="a trust policy ('code=sandbox,unsigned=container,keys=...'); None: $NEUROPOD_TRUST",
    )


#: The trust option, derived from :class:`TrustOptions`.
TRUST_OPTIONS = TrustOptions.table()
