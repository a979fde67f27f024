import subprocess
import sys

HEAVY = ("torch", "tensorflow", "jax", "onnxruntime", "grpc", "keras", "ml_dtypes")


def test_import_neuropod_imports_no_framework():
    code = (
        "import sys, neuropod, neuropod.loader, neuropod.packagers, neuropod.cli, neuropod.backends; "
        "from neuropod.packagers import create_torchscript_neuropod; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_surface_is_what_the_package_exports():
    import inspect

    import neuropod

    held = {
        name
        for name, value in vars(neuropod).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in ("annotations", "Any")
    }
    assert sorted(neuropod.__all__) == sorted(held | {"create_placeholder_neuropod"})
    assert len(set(neuropod.__all__)) == len(neuropod.__all__)
    for name in neuropod.__all__:
        assert getattr(neuropod, name) is not None


def test_every_error_class_is_in_the_tree_and_exported():
    import inspect

    import neuropod
    from neuropod import errors

    classes = {
        name for name, value in vars(errors).items() if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert sorted(classes) == sorted(errors.__all__)
    for name in classes:
        assert issubclass(getattr(errors, name), errors.NeuropodError), name
        assert name in neuropod.__all__, name
        assert f" {name} " in errors.__doc__ or f" {name}\n" in errors.__doc__, f"{name} is not drawn in the tree"


def test_no_module_defines_an_error_class_outside_errors_py():
    import re
    from pathlib import Path

    import neuropod

    root = Path(neuropod.__file__).parent
    pattern = re.compile(r"^class (\w+)\(([^)]*(Error|Exception)[^)]*)\):", re.M)
    found = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py" and path.parent == root:
            continue
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            if "ClickException" not in match.group(2):  # click's exception for the CLI's one-line errors
                found.append(f"{path.relative_to(root)}: {match.group(0)}")
    assert not found, found
