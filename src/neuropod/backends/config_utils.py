"""The original 0.2.0 release's path of :mod:`neuropod.utils.config_utils` (same functions)."""

from ..utils.config_utils import (
    ALLOWED_DTYPES,
    canonicalize_tensor_spec,
    read_neuropod_config,
    validate_neuropod_config,
    validate_tensor_spec,
    write_neuropod_config,
)

__all__ = [
    "ALLOWED_DTYPES",
    "validate_tensor_spec",
    "canonicalize_tensor_spec",
    "validate_neuropod_config",
    "read_neuropod_config",
    "write_neuropod_config",
]
