"""``config.json``: the package's top-level metadata, read and written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import PackageError, SpecError, UnsafePackageError
from ..spec import ProblemDefinition, TensorSpec
from . import layout

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
        if not isinstance(data, Mapping):
            raise PackageError(f"{source}: expected a JSON object, got {type(data).__name__}")
        for key in ("name", "platform", "input_spec", "output_spec"):
            if key not in data:
                raise PackageError(f"{source}: missing field {key!r}")
        try:
            problem = ProblemDefinition(data["input_spec"], data["output_spec"])
        except SpecError as exc:
            raise PackageError(f"{source}: {exc}") from None
        devices = dict(data.get("input_tensor_device") or {spec.name: "GPU" for spec in problem.inputs})
        custom_ops = data.get("custom_ops") or []
        if not isinstance(custom_ops, list) or not all(isinstance(op, str) for op in custom_ops):
            raise PackageError(f"{source}: custom_ops must be a list of file names, got {custom_ops!r}")
        for op in custom_ops:
            # A path here would load a library from outside the package, past its manifest.
            if PurePosixPath(op).name != op or op in (".", "..") or "\\" in op:
                raise UnsafePackageError(f"{source}: custom op {op!r} must be a file name inside 0/ops, not a path")
        return cls(
            name=str(data["name"]),
            platform=str(data["platform"]),
            problem=problem,
            platform_version_semver=str(data.get("platform_version_semver") or "*"),
            input_tensor_device=devices,
            custom_ops=tuple(custom_ops),
        )

    @classmethod
    def read(cls, root: Path) -> PackageConfig:
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
        """Write ``config.json`` with the bytes the original wrote for the same fields.

        That is ``json.dump(config, indent=4)``: the key order above, ``", "``
        and ``": "`` separators inside lines, non-ASCII escaped, no trailing
        newline. Tools that hash or diff packages rely on it.
        """
        (root / layout.CONFIG).write_text(json.dumps(self.to_json(), indent=4), encoding="utf-8")


def read_config_json(root: Path) -> Any:
    """The parsed JSON of ``root/config.json``, unchecked.

    Raises:
        PackageError: the file is missing or not JSON.
    """
    path = root / layout.CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: not found; is this a neuropod package?") from None
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path}: cannot be read as JSON: {exc}") from None


def write_backend_config(root: Path, settings: Mapping[str, Any]) -> None:
    """Write ``0/config.json`` as the original did: one line, keys in the order given, no trailing newline.

    (The original's packagers each called ``json.dump(settings, f)``; the
    Python packager sorted the keys, so it passes them sorted.)
    """
    path = root / layout.BACKEND_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(settings)), encoding="utf-8")
