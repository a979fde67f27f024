"""Where a model is: a local package path, or the URL of a model on a KServe v2 server.

One parser serves ``load_neuropod`` and every command that takes a model
(``inspect``, ``infer``, ``test``, ``bench`` ...), so they all accept the same
forms::

    grpc://host:port/model[/versions/v]        (grpcs:// with TLS)
    http://host:port/model[/versions/v]        (https:// with TLS)
    http://host:port/v2/models/model[/versions/v]   the REST URL the server shows

A URL of another scheme (``s3://``, ``gs://`` ...) is refused by name rather
than taken for a file that does not exist.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional, Union
from urllib.parse import unquote, urlsplit

from .errors import OptionError

__all__ = ["ModelURL", "REMOTE_SCHEMES", "is_model_url", "model_location", "parse_model_url", "model_url_of"]

#: URL schemes that load a model served by a remote server.
REMOTE_SCHEMES = ("grpc://", "grpcs://", "http://", "https://")

_DEFAULT_PORTS = {"grpc": 8001, "grpcs": 8001, "http": 8000, "https": 443}
_ANY_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ModelURL:
    """A model on a server: its transport, address, name and version ("" = the server's choice)."""

    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def is_grpc(self) -> bool:
        return self.scheme in ("grpc", "grpcs")

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def __str__(self) -> str:
        suffix = f"/versions/{self.version}" if self.version else ""
        return f"{self.where}/{self.model}{suffix}"


def is_model_url(location: object) -> bool:
    """Whether ``location`` names a model by URL rather than a local package: it looks like ``scheme://...``.

    The one test every place uses. An unsupported scheme (``s3://``) counts
    too, so that loading it is refused by name rather than as a missing file.
    """
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    return isinstance(location, str) and bool(_ANY_SCHEME.match(location))


def model_location(location: Union[str, os.PathLike[str]]) -> str:
    """A package path made absolute (for a process that starts elsewhere); a model URL as it is."""
    text = os.fspath(location)
    return text if is_model_url(text) else os.path.abspath(text)


def model_url_of(location: object) -> Optional[ModelURL]:
    """The model URL ``location`` names, or None for a local path.

    Raises:
        OptionError: a URL of an unsupported scheme, or a malformed one.
    """
    if not is_model_url(location):
        return None
    return parse_model_url(str(location))


def parse_model_url(url: str) -> ModelURL:
    """Parse a model URL (the forms in this module's docstring).

    Raises:
        OptionError: naming the URL and what is wrong with it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise OptionError(
            f"{url}: {scheme}:// URLs are not supported; give a local package path (download it first), "
            "or a model server's grpc://host:port/MODEL or http://host:port/MODEL"
        )
    if not parts.hostname:
        raise OptionError(f"{url}: no host")
    try:
        port = parts.port
    except ValueError:
        raise OptionError(f"{url}: the port is not a number") from None
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if segments[:2] == ["v2", "models"]:  # the REST route a user copies from the server
        segments = segments[2:]
    if len(segments) == 1:
        model, version = segments[0], ""
    elif len(segments) == 3 and segments[1] == "versions":
        model, version = segments[0], segments[2]
    else:
        raise OptionError(
            f"{url}: expected the path /MODEL, /MODEL/versions/VERSION or /v2/models/MODEL[/versions/VERSION], "
            f"got {parts.path or '/'!r}"
        )
    if parts.query or parts.fragment:
        raise OptionError(f"{url}: a model URL has no query or fragment")
    return ModelURL(scheme, parts.hostname, port, model, version)
