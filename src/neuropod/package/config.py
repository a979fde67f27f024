"""``config.json``: the package's top-level metadata, read and written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import PackageError, SpecError, UnsafePackageError
from ..spec import ProblemDefinition, TensorSpec
from . import layout
from .files import read_json

__all__ = ["PackageConfig", "DEVICES", "read_config_json", "write_backend_config"]

DEVICES = ("CPU", "GPU")


@dataclass(frozen=True)
class PackageConfig:
    """The contents of a package's ``config.json``.

    Old packages lack ``platform_version_semver``, ``input_tensor_device`` and
    ``custom_ops``: they default to ``*``, every input on GPU, and none.
    """

    name: str
    platform: str
    problem: ProblemDefinition
    platform_version_semver: str = "*"
    input_tensor_device: Mapping[str, str] = field(default_factory=dict)
    custom_ops: Tuple[str, ...] = ()

    @property
    def input_spec(self) -> Tuple[TensorSpec, ...]:
        return self.problem.inputs

    @property
    def output_spec(self) -> Tuple[TensorSpec, ...]:
        return self.problem.outputs

    @classmethod
    def build(
        cls,
        name: str,
        platform: str,
        input_spec: Any,
        output_spec: Any,
        platform_version_semver: str = "*",
        input_tensor_device: Optional[Mapping[str, str]] = None,
        default_input_tensor_device: str = "GPU",
        custom_ops: Any = (),
    ) -> PackageConfig:
        """Canonicalise and check every field, filling per-input devices."""
        if not isinstance(name, str) or not name:
            raise SpecError(f"model_name: expected a non-empty string, got {name!r}")
        problem = ProblemDefinition(input_spec, output_spec)
        if default_input_tensor_device not in DEVICES:
            raise SpecError(
                f"default_input_tensor_device: expected 'CPU' or 'GPU', got {default_input_tensor_device!r}"
            )
        devices = {spec.name: default_input_tensor_device for spec in problem.inputs}
        for input_name, device in (input_tensor_device or {}).items():
            if input_name not in devices:
                raise SpecError(f"input_tensor_device: {input_name!r} is not an input; inputs are {sorted(devices)}")
            if device not in DEVICES:
                raise SpecError(f"input_tensor_device[{input_name!r}]: expected 'CPU' or 'GPU', got {device!r}")
            devices[input_name] = device
        if not isinstance(platform_version_semver, str) or not platform_version_semver.strip():
            raise SpecError(
                "platform_version_semver: expected a version range such as '*' or '>=2.0', "
                f"got {platform_version_semver!r}"
            )
        return cls(name, platform, problem, platform_version_semver, devices, tuple(custom_ops or ()))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = layout.CONFIG) -> PackageConfig:
        """Check and parse a ``config.json`` object; every problem names ``source`` and the field.

        Raises:
            PackageError: a field is missing or of the wrong type or value.
            UnsafePackageError: a custom op names a path rather than a file in ``0/ops``.
        """
        if not isinstance(data, Mapping):
            raise PackageError(f"{source}: expected a JSON object, got {type(data).__name__}")
        for key in ("name", "platform", "input_spec", "output_spec"):
            if key not in data:
                raise PackageError(f"{source}: missing field {key!r}")
        for key in ("name", "platform"):
            if not isinstance(data[key], str) or not data[key]:
                raise PackageError(f"{source}: field {key!r}: expected a non-empty string, got {data[key]!r}")
        for key in ("input_spec", "output_spec"):
            _check_json_specs(data[key], f"{source}: field {key!r}")
        try:
            problem = ProblemDefinition(data["input_spec"], data["output_spec"])
        except SpecError as exc:
            raise PackageError(f"{source}: {exc}") from None
        devices = _read_devices(data.get("input_tensor_device"), problem, source)
        custom_ops = data.get("custom_ops") or []
        if not isinstance(custom_ops, list) or not all(isinstance(op, str) for op in custom_ops):
            raise PackageError(f"{source}: field 'custom_ops': expected a list of file names, got {custom_ops!r}")
        for op in custom_ops:
            # A path here would load a library from outside the package, past its manifest.
            if PurePosixPath(op).name != op or op in (".", "..") or "\\" in op or "\0" in op:
                raise UnsafePackageError(f"{source}: custom op {op!r} must be a file name inside 0/ops, not a path")
        semver = data.get("platform_version_semver") or "*"
        if not isinstance(semver, str):
            raise PackageError(f"{source}: field 'platform_version_semver': expected a string, got {semver!r}")
        return cls(
            name=data["name"],
            platform=data["platform"],
            problem=problem,
            platform_version_semver=semver,
            input_tensor_device=devices,
            custom_ops=tuple(custom_ops),
        )

    @classmethod
    def read(cls, root: Path) -> PackageConfig:
        """Read and check ``root/config.json`` (a regular file of bounded size)."""
        return cls.from_json(read_config_json(root), str(root / layout.CONFIG))

    def to_json(self) -> Dict[str, Any]:
        """The fields in the order the original Neuropod wrote them (tensor specs as name, dtype, shape)."""
        spec = self.problem.to_dict()
        return {
            "name": self.name,
            "platform": self.platform,
            "platform_version_semver": self.platform_version_semver,
            "input_spec": spec["input_spec"],
            "output_spec": spec["output_spec"],
            "custom_ops": list(self.custom_ops),
            "input_tensor_device": dict(self.input_tensor_device),
        }

    def write(self, root: Path) -> None:
        """Write ``config.json`` with the bytes the original's last version wrote for the same fields.

        That is ``json.dump(config, indent=4, sort_keys=True)``: keys sorted at
        every level, ``", "`` and ``": "`` separators inside lines, non-ASCII
        escaped, no trailing newline. (Its 0.2.0 release wrote the keys in the
        order of :meth:`to_json`; those packages load, and verify against the
        manifest they were written with.) Tools that hash or diff packages rely on it.
        """
        text = json.dumps(self.to_json(), indent=4, sort_keys=True)
        (root / layout.CONFIG).write_text(text, encoding="utf-8")


def read_config_json(root: Path) -> Any:
    """The parsed JSON of ``root/config.json``, unchecked.

    Raises:
        PackageError: the file is missing, not a regular file, too big or not JSON.
    """
    path = root / layout.CONFIG
    if not path.exists() and not path.is_symlink():
        raise PackageError(f"{path}: not found; is this a neuropod package?")
    return read_json(path)


def _check_json_specs(specs: Any, where: str) -> None:
    """JSON specs name their dtypes: a missing or null dtype is an error, not numpy's default float64."""
    if not isinstance(specs, list):
        raise PackageError(f"{where}: expected a list of tensor specs, got {type(specs).__name__}")
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise PackageError(f"{where}[{index}]: expected an object with name, dtype and shape, got {spec!r}")
        if not isinstance(spec.get("dtype"), str):
            raise PackageError(
                f"{where}[{index}] ({spec.get('name')!r}): 'dtype' must be a dtype name, got {spec.get('dtype')!r}"
            )


def _read_devices(value: Any, problem: ProblemDefinition, source: str) -> Dict[str, str]:
    """``input_tensor_device``: an object of input name -> "CPU" or "GPU"; inputs it omits are on GPU (old packages)."""
    devices = {spec.name: "GPU" for spec in problem.inputs}
    if value is None:
        return devices
    if not isinstance(value, dict):
        raise PackageError(
            f"{source}: field 'input_tensor_device': expected an object of input name -> 'GPU' or 'CPU', "
            f"got {type(value).__name__} {value!r}"
        )
    for name, device in value.items():
        if name not in devices:
            raise PackageError(
                f"{source}: field 'input_tensor_device': {name!r} is not an input; inputs are {sorted(devices)}"
            )
        if device not in DEVICES:
            raise PackageError(
                f"{source}: field 'input_tensor_device'[{name!r}]: expected 'GPU' or 'CPU', got {device!r}"
            )
        devices[name] = device
    return devices


def write_backend_config(root: Path, settings: Mapping[str, Any]) -> None:
    """Write ``0/config.json`` as the original did: one line, keys in the order given, no trailing newline.

    (The original's packagers each called ``json.dump(settings, f)``; the
    Python packager sorted the keys, so it passes them sorted.)
    """
    path = root / layout.BACKEND_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(settings)), encoding="utf-8")
