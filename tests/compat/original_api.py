"""The original Neuropod's public Python API, recorded as data (read from its source, uber/neuropod).

Sources: ``source/python/neuropod/`` at the repository's last version, plus
the module paths of the 0.2.0 release (``neuropod.backends.config_utils``,
``neuropod.loader.load_installed_backends``, ``dtype_utils.maybe_convert_bindings_types``).
Public means a module-level function or constant whose name does not start
with ``_``. Left out on purpose: classes of the original's executors
(``NativeNeuropodExecutor``, ``neuropod.backends.*.executor``), which
``load_neuropod`` returned but users did not build, the native extension
``neuropod.neuropod_native``, and the test helpers ``neuropod.tests``.

Each function is written as its parameter list: ``name``, ``name=`` (has a
default), ``*args``, ``**kwargs``. ``None`` marks a constant.
"""

from __future__ import annotations

from typing import Dict, Optional

Api = Dict[str, Dict[str, Optional[str]]]

_CONFIG_UTILS: Dict[str, Optional[str]] = {
    "ALLOWED_DTYPES": None,
    "validate_tensor_spec": "spec",
    "validate_neuropod_config": "config",
    "canonicalize_tensor_spec": "spec",
    "write_neuropod_config": (
        "neuropod_path, model_name, platform, input_spec, output_spec, platform_version_semver=, custom_ops=, "
        "input_tensor_device=, default_input_tensor_device=, **kwargs"
    ),
    "read_neuropod_config": "neuropod_path",
}

#: module -> public name -> parameters (None: a constant).
ORIGINAL_API: Api = {
    "neuropod.loader": {
        "load_neuropod": "neuropod_path, _always_use_native=, **kwargs",
        "load_installed_backends": "",  # 0.2.0
    },
    "neuropod.registry": {"register_backend": "platform, version, so_path"},
    "neuropod.utils.config_utils": _CONFIG_UTILS,
    "neuropod.backends.config_utils": _CONFIG_UTILS,  # 0.2.0's path
    "neuropod.utils.eval_utils": {
        "RUN_NATIVE_TESTS": None,
        "TEST_DATA_FILENAME": None,
        "check_output_matches_expected": "out, expected_out",
        "print_output_summary": "out",
        "load_and_test_neuropod": "neuropod_path, test_input_data, test_expected_out=, neuropod_load_args=, **kwargs",
        "save_test_data": "neuropod_path, test_input_data, test_expected_out",
        "load_test_data": "neuropod_path",
    },
    "neuropod.utils.env_utils": {
        "eval_in_new_process": "neuropod_path, input_data, binary_path=, extra_args=, neuropod_load_args=, **kwargs",
    },
    "neuropod.utils.dtype_utils": {
        "get_dtype": "arg",
        "get_dtype_name": "arg",
        "maybe_convert_bindings_types": "items",  # 0.2.0
    },
    "neuropod.utils.hash_utils": {"sha256sum": "filename"},
    "neuropod.utils.zip_loader": {
        "TO_CLEANUP": None,
        "cleanup": "",
        "extract_neuropod_if_necessary": "path",
    },
    "neuropod.utils.packaging_utils": {
        "zip_date": None,
        "zip_modtime": None,
        "COMMON_DOC_PRE": None,
        "COMMON_DOC_POST": None,
        "set_packager_docstring": "f",
        "packager": "platform",
        "expand_default_kwargs": "deps",
    },
    "neuropod.utils.pip_utils": {"compile_requirements": "requirements, lockfile"},
    "neuropod.utils.randomify": {"randomify_neuropod": "output_path, input_spec, output_spec"},
    "neuropod.backends.python.utils": {"preinstall_deps": "backend_version, requirements"},
    "neuropod.backends.neuropod_executor": {"validate_tensors_against_specs": "tensors, tensor_specs"},
    "neuropod.backends.keras.packager": {
        "infer_keras_input_spec": "model, node_name_mapping=",
        "infer_keras_output_spec": "model, node_name_mapping=",
    },
}

#: The keywords every packager took (its own, ``_create_neuropod``'s, ``write_neuropod_config``'s and
#: ``load_and_test_neuropod``'s: the original's packagers passed keywords through to all of them).
COMMON_PACKAGER_KEYWORDS = (
    "neuropod_path",
    "model_name",
    "input_spec",
    "output_spec",
    "platform_version_semver",
    "input_tensor_device",
    "default_input_tensor_device",
    "custom_ops",
    "package_as_zip",
    "test_input_data",
    "test_expected_out",
    "persist_test_data",
    "neuropod_load_args",
)

#: packager -> (the modules it was imported from, its own keywords). The original's packagers were
#: keyword-only wrappers (``@packager``), so only the names count; ``create_keras_neuropod``
#: took ``sess, model`` first, and its other keywords went on to ``create_tensorflow_neuropod``.
ORIGINAL_PACKAGERS = {
    "create_torchscript_neuropod": (
        ("neuropod.packagers", "neuropod.backends.torchscript.packager"),
        ("module", "module_path"),
    ),
    "create_tensorflow_neuropod": (
        ("neuropod.packagers", "neuropod.backends.tensorflow.packager"),
        ("node_name_mapping", "frozen_graph_path", "graph_def", "saved_model_dir", "trackable_obj", "init_op_names"),
    ),
    "create_keras_neuropod": (
        ("neuropod.packagers", "neuropod.backends.keras.packager"),
        ("sess", "model", "node_name_mapping", "init_op_names"),
    ),
    "create_python_neuropod": (
        ("neuropod.packagers", "neuropod.backends.python.packager"),
        ("data_paths", "code_path_spec", "entrypoint_package", "entrypoint", "requirements"),
    ),
    "create_pytorch_neuropod": (
        ("neuropod.packagers", "neuropod.backends.pytorch.packager"),
        ("data_paths", "code_path_spec", "entrypoint_package", "entrypoint", "requirements"),
    ),
}

#: ``load_neuropod`` keywords of the original (its native bindings' and its pure-Python executors').
ORIGINAL_LOAD_KEYWORDS = ("visible_gpu", "use_ope", "load_custom_ops", "_always_use_native")
