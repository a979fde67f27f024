"""The environment variables a worker process starts with: an allow-list, not the parent's whole environment.

A model runs code the caller may not have written; the parent's environment
can hold secrets (``NEUROPOD_SERVE_TOKEN``, cloud credentials, API keys). A
worker gets only what a framework or the interpreter needs to run as it would
in the parent: locale and time zone, ``PATH`` and ``HOME``, the Python
interpreter's own switches, thread-pool sizes, GPU selection and the
frameworks' own settings (by prefix), plus

- the names the package declares in ``config.json`` (``"pass_env": [...]``),
- the names the caller passes with the ``pass_env`` option (``"*"``: all of
  them, the old behaviour), and
- the values the caller sets with ``worker_env``.

A name that looks like a secret (``TOKEN``, ``SECRET``, ``PASSWORD``,
``CREDENTIAL``, ``API_KEY`` ...) is kept out even when a prefix or the package
asks for it; only the caller's ``pass_env`` lets one through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "worker_environment",
    "declared_names",
    "ALLOW_LIST",
    "ALLOWED_NAMES",
    "ALLOWED_PREFIXES",
    "PASS_ALL",
    "allow_list_table",
]

#: What a worker keeps of the parent's environment, by ecosystem: exact names,
#: and prefixes written ``NAME_*``. The one table: the doc's table
#: (docs/environments.md) is :func:`allow_list_table`'s output, checked by a test.
ALLOW_LIST: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("system", ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TERM", "LD_LIBRARY_PATH", "MALLOC_*")),
    ("locale and time zone", ("LANG", "LANGUAGE", "LC_*", "TZ")),
    ("TLS certificates", ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")),
    ("caches", ("XDG_CACHE_HOME", "XDG_RUNTIME_DIR")),
    ("Python, virtual environments", ("PYTHON*", "VIRTUAL_ENV", "CONDA_PREFIX", "COVERAGE_PROCESS_START")),
    ("thread pools", ("OMP_*", "MKL_*", "KMP_*", "OPENBLAS_*", "NUMEXPR_*", "BLIS_*", "GOTO_*")),
    ("GPUs", ("CUDA_*", "CUDNN_*", "NVIDIA_*", "NCCL_*", "HIP_*", "ROCM_*", "HSA_*")),
    ("PyTorch", ("TORCH_*", "PYTORCH_*", "TORCHINDUCTOR_*", "TORCHDYNAMO_*", "TRITON_*")),
    ("TensorFlow", ("TF_*",)),
    ("Keras", ("KERAS_*",)),
    ("JAX and XLA", ("JAX_*", "XLA_*")),
    ("ONNX Runtime", ("ORT_*",)),
    (
        "Hugging Face",
        ("HF_*", "HUGGINGFACE_*", "TRANSFORMERS_*", "TOKENIZERS_*", "DIFFUSERS_*", "SENTENCE_TRANSFORMERS_HOME"),
    ),
    ("neuropod", ("NEUROPOD_*",)),
)

#: Variables a worker keeps by exact name (from :data:`ALLOW_LIST`).
ALLOWED_NAMES = frozenset(name for _, names in ALLOW_LIST for name in names if not name.endswith("*"))

#: Variables a worker keeps by prefix (from :data:`ALLOW_LIST`).
ALLOWED_PREFIXES = tuple(name[:-1] for _, names in ALLOW_LIST for name in names if name.endswith("*"))


def allow_list_table() -> str:
    """:data:`ALLOW_LIST` as a Markdown table (the one in docs/environments.md)."""
    rows = ["| ecosystem | kept (`*`: any name with that prefix) |", "| --- | --- |"]
    rows += [f"| {ecosystem} | {', '.join(f'`{n}`' for n in names)} |" for ecosystem, names in ALLOW_LIST]
    return "\n".join(rows)


#: Names that look like secrets: kept out unless the caller passes them by name
#: (``HF_TOKEN`` is; ``TOKENIZERS_PARALLELISM`` is a tokenizer setting, not a token).
_SECRET = re.compile(r"TOKEN(?!IZER)|SECRET|PASSW|CREDENTIAL|API_?KEY|PRIVATE_?KEY|AUTH", re.IGNORECASE)

#: ``pass_env="*"``: the worker inherits the whole environment.
PASS_ALL = "*"


def _allowed(name: str) -> bool:
    return (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) and not _SECRET.search(name)


def worker_environment(
    parent: Mapping[str, str],
    declared: Sequence[str] = (),
    passed: Union[str, Sequence[str]] = (),
    extra: Mapping[str, str] = {},  # noqa: B006 - read only
) -> dict:
    """The environment a worker starts with.

    Args:
        parent: this process's environment.
        declared: names the package asks for (secret-looking ones are still dropped).
        passed: names the caller passes through, or :data:`PASS_ALL`.
        extra: values the caller sets (``worker_env``); they win.
    """
    if passed == PASS_ALL:
        env = dict(parent)
    else:
        wanted = set(passed)
        env = {
            name: value
            for name, value in parent.items()
            if name in wanted or _allowed(name) or (name in declared and not _SECRET.search(name))
        }
    env.update(extra)
    return env


def declared_names(package_root: Union[str, Path]) -> Tuple[str, ...]:
    """The ``pass_env`` names of a package's ``config.json`` (() when it declares none or is unreadable)."""
    try:
        with open(Path(package_root) / "config.json", encoding="utf-8") as handle:
            config = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return ()
    names: Optional[object] = config.get("pass_env") if isinstance(config, dict) else None
    if not isinstance(names, list):
        return ()
    return tuple(name for name in names if isinstance(name, str))
