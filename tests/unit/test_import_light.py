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
