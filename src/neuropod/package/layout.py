"""File names of the neuropod package format, in one place.

A package is a directory, or the same tree as a zip file::

    config.json          name, platform, specs, devices, custom ops
    manifest.json        sha256 of every other file
    test_data.npz        optional persisted test data (safe: no pickle)
    test_data.pkl        legacy persisted test data (read only when trusted)
    0/config.json        backend settings
    0/data/              the framework's artifact
    0/code/              packaged Python code
    0/ops/               custom-op shared libraries
    0/requirements.lock  pinned requirements of a Python model

Each framework's artifact has one name under ``0/data/``, listed here so that
packagers and backends share it (this module imports no framework).
"""

CONFIG = "config.json"
MANIFEST = "manifest.json"
TEST_DATA = "test_data.npz"
LEGACY_TEST_DATA = "test_data.pkl"
MODEL_DIR = "0"
BACKEND_CONFIG = "0/config.json"
DATA_DIR = "0/data"
CODE_DIR = "0/code"
OPS_DIR = "0/ops"
REQUIREMENTS = "0/requirements.lock"

MANIFEST_VERSION = 1
# Zip entries get this fixed timestamp so the same tree always zips to the same bytes.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)

# The framework artifacts, under DATA_DIR.
TORCHSCRIPT_MODEL = "model.pt"
TORCH_EXPORT_PROGRAM = "model.pt2"
ONNX_MODEL = "model.onnx"
KERAS_MODEL = "model.keras"
TF_GRAPH = "model.pb"  # a TF1 (frozen) GraphDef
TF_SAVED_MODEL = "savedmodel"  # a TF2 SavedModel directory
TF_DEFAULT_SIGNATURE = "serving_default"  # the SavedModel signature served when 0/config.json names none
JAX_EXPORTED = "model.jax_exported"
JAX_PARAMS = "params.npz"
