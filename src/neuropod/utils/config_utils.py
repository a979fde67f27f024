"""The original's ``neuropod.utils.config_utils``: ``config.json`` read, written and checked.

Thin functions over :class:`neuropod.package.PackageConfig`, with the
original's names and arguments. Invalid configs raise ``ValueError``
subclasses (:class:`~neuropod.SpecError`, :class:`~neuropod.PackageError`),
as the original raised ``ValueError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import PackageError, SpecError
from ..package import PackageConfig, open_package
from ..package.config import DEVICES, read_config_json
from ..spec import DTYPES, canonical_dtype

__all__ = [
    "ALLOWED_DTYPES",
    "validate_tensor_spec",
    "canonicalize_tensor_spec",
    "validate_neuropod_config",
    "read_neuropod_config",
    "write_neuropod_config",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The dtype names a spec may use: the original's eleven, and float16, bfloat16 and bool.
ALLOWED_DTYPES = list(DTYPES)


def validate_tensor_spec(spec: Sequence[Mapping[str, Any]]) -> None:
    """Check a canonical tensor spec as the original did.

    Each entry has a string ``name``, a ``dtype`` from :data:`ALLOWED_DTYPES`
    (canonical names only: run :func:`canonicalize_tensor_spec` first for
    aliases such as ``"double"``) and a ``shape`` list or tuple of None,
    symbols (strings) and positive ints.

    Raises:
        SpecError: a ``ValueError`` naming the tensor and the field.
    """
    for item in spec:
        try:
            name, dtype, shape = item["name"], item["dtype"], item["shape"]
        except (KeyError, TypeError):
            raise SpecError(f"tensor spec {item!r}: expected a dict with name, dtype and shape") from None
        if not isinstance(name, str):
            raise SpecError(f"tensor spec field 'name': expected a string, got {name!r} of type {type(name).__name__}")
        if dtype not in ALLOWED_DTYPES:
            raise SpecError(f"tensor {name!r}: dtype {dtype!r} is not one of {ALLOWED_DTYPES}")
        if not isinstance(shape, (list, tuple)):
            raise SpecError(f"tensor {name!r}: shape must be a list or tuple, got {shape!r}")
        for dim in shape:
            if not (dim is None or isinstance(dim, str) or (type(dim) is int and dim > 0)):
                raise SpecError(
                    f"tensor {name!r}: every dimension must be None, a symbol (string) or a positive int, got {dim!r}"
                )


def canonicalize_tensor_spec(spec: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The spec with canonical dtype names (``"double"`` -> ``"float64"``), each entry as name, dtype, shape.

    Raises:
        SpecError: an entry lacks a field or names an unknown dtype.
    """
    transformed = []
    for item in spec:
        try:
            name, dtype, shape = item["name"], item["dtype"], item["shape"]
        except (KeyError, TypeError):
            raise SpecError(f"tensor spec {item!r}: expected a dict with name, dtype and shape") from None
        try:
            dtype = canonical_dtype(dtype)
        except SpecError as exc:
            raise SpecError(f"tensor {name!r}: {exc}") from None
        transformed.append({"name": name, "dtype": dtype, "shape": shape})
    return transformed


def validate_neuropod_config(config: Mapping[str, Any]) -> None:
    """Check a config dict as the original did.

    Names and platform are strings, specs are valid, ``custom_ops`` is a list
    of file names, and ``input_tensor_device`` gives every input (and only
    inputs) ``"CPU"`` or ``"GPU"``.

    Raises:
        PackageError / SpecError (both ``ValueError``): naming the field.
    """
    for key in ("name", "platform"):
        if not isinstance(config.get(key), str):
            raise PackageError(f"config field {key!r}: expected a string, got {config.get(key)!r}")
    if "input_tensor_device" not in config:
        raise PackageError(
            "config field 'input_tensor_device': missing (read_neuropod_config fills it for old configs)"
        )
    parsed = PackageConfig.from_json(config, "config")
    devices = config["input_tensor_device"]
    if not isinstance(devices, Mapping):
        raise PackageError(f"config field 'input_tensor_device': expected an object, got {devices!r}")
    inputs = {spec.name for spec in parsed.input_spec}
    if set(devices) != inputs:
        raise PackageError(
            f"config field 'input_tensor_device': inputs without a device {sorted(inputs - set(devices))}, "
            f"devices for tensors not in input_spec {sorted(set(devices) - inputs)}"
        )
    for name, device in devices.items():
        if device not in DEVICES:
            raise PackageError(f"config field 'input_tensor_device': {name!r} must be 'GPU' or 'CPU', got {device!r}")


def read_neuropod_config(neuropod_path: PathLike) -> Dict[str, Any]:
    """The config of a package directory or zip, as a dict, checked.

    As in the original, an old config without ``input_tensor_device`` gets
    every input on GPU. A zip is read from its verified extraction.
    """
    path = Path(neuropod_path)
    root = path if path.is_dir() else open_package(path).root
    config = read_config_json(root)
    if isinstance(config, dict) and "input_tensor_device" not in config:
        parsed = PackageConfig.from_json(config, str(root / "config.json"))
        config["input_tensor_device"] = {spec.name: "GPU" for spec in parsed.input_spec}
    validate_neuropod_config(config)
    return config  # type: ignore[no-any-return]


def write_neuropod_config(
    neuropod_path: PathLike,
    model_name: str,
    platform: str,
    input_spec: Any,
    output_spec: Any,
    platform_version_semver: str = "*",
    custom_ops: Optional[Sequence[str]] = None,
    input_tensor_device: Optional[Mapping[str, str]] = None,
    default_input_tensor_device: str = "GPU",
    **kwargs: Any,
) -> None:
    """Write ``config.json`` into the directory ``neuropod_path``, with the bytes the original wrote.

    Extra keyword arguments are ignored, as the original's packagers passed
    all their options through.
    """
    PackageConfig.build(
        model_name,
        platform,
        input_spec,
        output_spec,
        platform_version_semver=platform_version_semver,
        input_tensor_device=input_tensor_device,
        default_input_tensor_device=default_input_tensor_device,
        custom_ops=list(custom_ops or []),
    ).write(Path(neuropod_path))
