"""The ``neuropod`` command line.

User errors (a bad path, spec or input) print one line and exit with code 2;
a failed self-test exits with code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import click
import numpy as np

from ._cli_errors import VERBOSE, UserError, user_errors
from ._cli_types import ByteSize, Duration
from ._version import __version__
from .kserve import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["main"]


@click.group()
@click.version_option(version=__version__, prog_name="neuropod")  # the distribution is neuropod-python
@click.option(
    "--verbose",
    is_flag=True,
    help="On an error, print the full traceback, the framework's own error chained under it, before the one line.",
)
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Package, inspect, test and run neuropod models."""
    ctx.meta[VERBOSE] = verbose


#: The one name of the argument that names a model (a package path or a model URL) in every command's help.
MODEL_ARGUMENT = "PATH"


def _spec_lines(specs: Any) -> str:
    """Specs as every inspect prints them, local or remote: dtype names, symbols and None as the spec has them."""
    return "\n".join(f"    {s.name:<20} {s.dtype:<9} {list(s.shape)}" for s in specs) or "    (none)"


@main.command()
@click.argument("path", metavar=MODEL_ARGUMENT)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def inspect(path: str, as_json: bool) -> None:
    """Show a model's name, platform and specs; for a package also devices, files and manifest check.

    PATH is a package (a directory or a .zip) or a model URL (grpc://host:port/MODEL, http://...).
    """
    from .package import open_package
    from .trust_cli import trust_lines
    from .urls import model_url_of

    url = model_url_of(path)
    if url is not None:
        _inspect_remote(path, as_json)
        return
    # Verified as a load verifies it: a zip's cached copy against the zip, never against itself.
    package = open_package(path)
    manifest_state = "verified" if package.has_manifest else "absent (package predates manifests)"
    config = package.config
    if as_json:
        info = {**config.to_json(), "files": package.files(), "manifest": manifest_state, "root": str(package.root)}
        info.update({label: text for label, text in trust_lines(package)})
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"name:      {config.name}")
    click.echo(f"platform:  {config.platform} {config.platform_version_semver}")
    click.echo(f"inputs:\n{_spec_lines(config.input_spec)}")
    click.echo(f"outputs:\n{_spec_lines(config.output_spec)}")
    click.echo("devices:   " + ", ".join(f"{k}={v}" for k, v in config.input_tensor_device.items()))
    if config.custom_ops:
        click.echo("custom ops: " + ", ".join(config.custom_ops))
    click.echo("files:\n" + "\n".join(f"    {f}" for f in package.files()))
    click.echo(f"manifest:  {manifest_state}")
    for label, text in trust_lines(package):
        click.echo(f"{label + ':':<10} {text}")


def _inspect_remote(url: str, as_json: bool) -> None:
    """The metadata a server gives for the model at ``url``."""
    from .loader import load_neuropod

    with load_neuropod(url, validate=False) as model:
        info = model.executor.info  # type: ignore[attr-defined]
        problem = model.problem  # the specs as the client reads the metadata: what a package's inspect shows
    if as_json:
        click.echo(
            json.dumps(
                {
                    "url": url,
                    "name": info.name,
                    "platform": info.platform,
                    "versions": info.versions,
                    "input_spec": [spec.to_dict() for spec in problem.inputs],
                    "output_spec": [spec.to_dict() for spec in problem.outputs],
                },
                indent=2,
            )
        )
        return
    click.echo(f"url:       {url}")
    click.echo(f"name:      {info.name}")
    click.echo(f"platform:  {info.platform or '(not given)'}")
    click.echo(f"versions:  {', '.join(info.versions) or '(not given)'}")
    click.echo(f"inputs:\n{_spec_lines(problem.inputs)}")
    click.echo(f"outputs:\n{_spec_lines(problem.outputs)}")


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _magic(file: str) -> bytes:
    try:
        with open(file, "rb") as handle:
            return handle.read(6)
    except OSError as exc:
        raise UserError(f"--input: cannot read {file!r}: {exc.strerror or exc}") from None


def _load_npy(name: str, file: str) -> np.ndarray:
    magic = _magic(file)
    if magic.startswith(_ZIP_MAGIC):
        raise UserError(
            f"--input {name}={file}: this is an .npz archive, not an .npy file; "
            f"pass it as -i {file} to give every array in it as the input of its name"
        )
    if magic != _NPY_MAGIC:
        raise UserError(
            f"--input {name}={file}: not an .npy file (it starts with {magic!r}, not the .npy magic); "
            "write it with numpy.save"
        )
    try:
        return np.load(file, allow_pickle=False)  # type: ignore[no-any-return]
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"--input {name}={file}: cannot read it as .npy: {exc}") from None


def _load_npz(file: str) -> Dict[str, np.ndarray]:
    if not Path(file).is_file() or _magic(file)[:4] != _ZIP_MAGIC:
        raise UserError(f"--input {file}: expected NAME=FILE.npy, or an .npz file holding several inputs")
    import zipfile

    try:
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"--input {file}: cannot read it as .npz: {exc}") from None


def _parse_inputs(pairs: Tuple[str, ...]) -> Dict[str, np.ndarray]:
    """``-i NAME=FILE.npy`` and ``-i FILE.npz`` (every array in it, by its name); a name given twice is refused."""
    inputs: Dict[str, np.ndarray] = {}
    given_by: Dict[str, str] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep:
            arrays = _load_npz(pair)
        elif not name or not file:
            raise UserError(f"--input {pair!r}: expected NAME=FILE.npy, or an .npz file holding several inputs")
        else:
            arrays = {name: _load_npy(name, file)}
        for key, array in arrays.items():
            if key in given_by:
                raise UserError(f"--input: input {key!r} is given twice ({given_by[key]} and {pair})")
            given_by[key] = pair
            inputs[key] = array
    return inputs


def _jsonable(array: np.ndarray) -> Dict[str, Any]:
    values = array.astype(np.float32) if array.dtype.name in ("bfloat16", "float16") else array
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": values.tolist()}


@main.command()
@click.argument("path", metavar=MODEL_ARGUMENT)
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy|FILE.npz",
    help="An input tensor, or an .npz of several by name (repeatable).",
)
@click.option(
    "--output", "-o", "output_dir", type=click.Path(file_okay=False), help="Write each output to DIR/NAME.npy."
)
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as JSON.")
@click.option("--use-ope", is_flag=True, help="Run the model in a worker process.")
@user_errors
def infer(path: str, inputs: Tuple[str, ...], output_dir: str, as_json: bool, use_ope: bool) -> None:
    """Run a model on inputs read from .npy / .npz files.

    PATH is a package (a directory or a .zip) or a model URL (grpc://host:port/MODEL, http://...).
    """
    from .loader import load_neuropod

    arrays = _parse_inputs(inputs)
    with load_neuropod(path, use_ope=use_ope or None) as model:  # None: the package may need a worker
        outputs = model.infer(arrays)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for name, array in outputs.items():
            np.save(Path(output_dir) / f"{name}.npy", array, allow_pickle=False)
    if as_json:
        click.echo(json.dumps({name: _jsonable(a) for name, a in outputs.items()}))
    elif not output_dir:
        for name, array in outputs.items():
            click.echo(f"{name}: {array.dtype} {list(array.shape)}\n{np.array2string(array, threshold=40)}")
    else:
        click.echo(f"wrote {len(outputs)} output(s) to {output_dir}")


@main.command()
@click.argument("path", metavar=MODEL_ARGUMENT)
@click.option("--trusted", is_flag=True, help="Allow a legacy pickled test_data.pkl (it runs code when loaded).")
@user_errors
def test(path: str, trusted: bool) -> None:
    """Re-run package PATH's stored test data; exit 1 on a mismatch."""
    from .package import open_package
    from .selftest import run_self_test
    from .urls import model_url_of

    if model_url_of(path) is not None:
        raise UserError(
            f"{path}: a model on a server carries no test data; run neuropod test on its package, "
            "or neuropod check / compare against the URL"
        )
    data = open_package(path).test_data(trusted=trusted)
    if data is None:
        raise UserError(f"{path}: the package holds no test data")
    test_input, expected = data
    run_self_test(path, test_input, expected or None)
    if not expected:
        click.echo(
            f"RAN: {path} ran on its {len(test_input)} stored test input(s); checked nothing: "
            "the package stores no expected outputs"
        )
        return
    click.echo(f"PASSED: {path} ({len(expected)} output(s) checked)")


@main.command()
@click.option(
    "--spec", "spec_file", required=True, type=click.Path(dir_okay=False), help="JSON with input_spec and output_spec."
)
@click.option("--name", "model_name", default=None, help="Model name (default: the spec's 'name', or 'placeholder').")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed of the outputs.")
@click.option("--zip/--dir", "as_zip", default=True, show_default=True, help="Write a zip or a directory.")
@click.argument("out")
@user_errors
def placeholder(spec_file: str, model_name: str, seed: int, as_zip: bool, out: str) -> None:
    """Generate a placeholder model from a problem definition."""
    from .packagers import create_placeholder_neuropod

    try:
        spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{spec_file}: not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or "input_spec" not in spec or "output_spec" not in spec:
        raise UserError(f"{spec_file}: expected a JSON object with 'input_spec' and 'output_spec'")
    name = model_name or spec.get("name") or "placeholder"
    create_placeholder_neuropod(out, name, spec["input_spec"], spec["output_spec"], seed=seed, package_as_zip=as_zip)
    click.echo(f"wrote placeholder model {name!r} to {out}")


def _serve_settings(config_file: Optional[str]) -> Dict[str, Any]:
    """Per-model settings from a ``{"models": {NAME: {...}}}`` JSON file."""
    from .serving.repository import ModelSettings

    if config_file is None:
        return {}
    try:
        data = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{config_file}: not valid JSON: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise UserError(f'{config_file}: expected {{"models": {{NAME: {{setting: value}}}}}}')
    return {name: ModelSettings.from_dict(value, f"{config_file}: model {name!r}") for name, value in models.items()}


def _read_token(token_file: str, token: Optional[str]) -> str:
    """The first line of ``token_file``; refused together with --token or NEUROPOD_SERVE_TOKEN."""
    if token is not None:
        raise UserError("--token-file: give the token once: --token-file, or --token / NEUROPOD_SERVE_TOKEN")
    try:
        with open(token_file, encoding="utf-8") as handle:
            first = handle.readline(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--token-file {token_file}: cannot read it: {exc}") from None
    if not first:
        raise UserError(f"--token-file {token_file}: the file is empty; expected the token on its first line")
    return first


@main.command()
@click.argument("path", metavar=MODEL_ARGUMENT)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless told otherwise).",
)
@click.option(
    "--grpc-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="gRPC port (0: any free port).",
)
@click.option(
    "--http-port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="REST and /metrics port (0: any free port).",
)
@click.option(
    "--use-ope", is_flag=True, help="Run every model in out-of-process workers (default: in the server process)."
)
@click.option("--ope", "ope_alias", is_flag=True, hidden=True, help="Deprecated spelling of --use-ope.")
@click.option(
    "--max-batch-size",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Merge concurrent requests up to this many rows (0: off).",
)
@click.option(
    "--max-queue-delay-ms",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0),
    help="How long a batch waits to fill.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help='Per-model settings: {"models": {NAME: {...}}}.',
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Threads running slow models' calls (fast ones run where they arrive).",
)
@click.option(
    "--max-message-bytes",
    default=DEFAULT_MAX_MESSAGE_BYTES,
    show_default=True,
    type=ByteSize(),
    metavar="SIZE",
    help="Largest request accepted: bytes, or a size such as 64MiB.",
)
@click.option(
    "--token",
    envvar="NEUROPOD_SERVE_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN'. Prefer env NEUROPOD_SERVE_TOKEN or --token-file: "
    "other users can read a command line.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the bearer token from this file (its first line).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM certificate chain: serve TLS on both ports.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="PEM private key of --tls-cert.")
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    type=Duration(),
    metavar="DURATION",
    help="How long in-flight requests get at shutdown (90s, 2m; a bare number: seconds).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--poll-repo",
    type=Duration(positive=True),
    default=None,
    metavar="DURATION",
    help="Re-read the repository this often (30s, 5m; a bare number: seconds): load added and changed packages, "
    "unload removed ones.",
)
@click.option(
    "--strict", is_flag=True, help="A package that fails to load stops the server (default: log it, serve the others)."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Server processes sharing the ports (SO_REUSEPORT), so every core serves.",
)
@click.option(
    "--pin-cpus",
    is_flag=True,
    help="Pin each server process to one CPU (worker i to the i-th): faster on a machine it has to itself.",
)
@click.option("--worker-index", default=0, type=click.IntRange(0), hidden=True, help="Set by --workers.")
@click.option("--reuse-port", is_flag=True, hidden=True, help="Bind with SO_REUSEPORT (set by --workers).")
@user_errors
def serve(
    path: str,
    host: str,
    grpc_port: int,
    http_port: int,
    use_ope: bool,
    ope_alias: bool,
    max_batch_size: int,
    max_queue_delay_ms: float,
    config_file: Optional[str],
    threads: int,
    max_message_bytes: int,
    token: Optional[str],
    token_file: Optional[str],
    tls_cert: Optional[str],
    tls_key: Optional[str],
    grace: float,
    log_level: str,
    poll_repo: Optional[float],
    strict: bool,
    workers: int,
    pin_cpus: bool,
    worker_index: int,
    reuse_port: bool,
) -> None:
    """Serve a package or a model repository over KServe v2 gRPC and REST.

    PATH is one package, or a directory of packages (REPO/MODEL/) and
    numbered versions (REPO/MODEL/VERSION/). Logs are JSON lines on stderr;
    SIGINT/SIGTERM stop the server after in-flight requests finish.
    """
    import logging

    if ope_alias:
        click.echo("warning: --ope is deprecated; it is spelled --use-ope, as in every other command", err=True)
        use_ope = True
    if token_file is not None:  # the user's own mistakes first, whatever is installed
        token = _read_token(token_file, token)
    if pin_cpus and workers == 1:  # before grpc starts a thread: threads keep the CPUs they began with
        from .serving.workers import pin_to_cpu

        pin_to_cpu(worker_index)
    from .extras import require

    for module in ("grpc", "google.protobuf", "aiohttp", "prometheus_client"):
        require(module, "serve", "neuropod serve")
    from .serving.logs import configure_json_logging
    from .serving.repository import ModelRepository, ModelSettings
    from .serving.server import ModelServer, ServerConfig

    if workers > 1:
        from .serving.workers import serve_workers

        configure_json_logging(getattr(logging, log_level.upper()))
        sys.exit(serve_workers(sys.argv, workers, host, grpc_port, http_port))
    model_settings = _serve_settings(config_file)
    # Without --use-ope the plan decides (None): a model may still need a worker (another environment, isolation).
    defaults = ModelSettings(
        use_ope=use_ope or None, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms
    )
    config = ServerConfig(
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        max_message_bytes=max_message_bytes,
        threads=threads,
        token=token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        shutdown_grace_s=grace,
        poll_repo_s=poll_repo,
        reuse_port=reuse_port,
    )
    configure_json_logging(getattr(logging, log_level.upper()))
    repository = ModelRepository(path, defaults, model_settings)
    repository.scan()  # a path that holds no package fails before any port is bound
    # Models load after the ports are bound: liveness answers meanwhile, readiness waits for them.
    ModelServer(repository, config).serve_forever(load=True, strict=strict)


# The problem-agnostic tools (check, evaluate, compare, bench) live in neuropod.tools.
from .tools.cli import COMMANDS as _TOOL_COMMANDS  # noqa: E402

for _command in _TOOL_COMMANDS:
    main.add_command(_command)

# neuropod envs list | build | prune | doctor: the environments of version selection.
from .envs.cli import envs as _envs  # noqa: E402

main.add_command(_envs)

# neuropod keygen | sign | verify: ed25519 signatures of package manifests (the trust policy).
from .trust_cli import COMMANDS as _TRUST_COMMANDS  # noqa: E402

for _command in _TRUST_COMMANDS:
    main.add_command(_command)

# neuropod cache list | prune | clear: extracted package zips and built environments, with sizes.
from .cache_cli import cache as _cache  # noqa: E402

main.add_command(_cache)


if __name__ == "__main__":  # pragma: no cover
    main()
