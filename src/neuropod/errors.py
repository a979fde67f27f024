"""The one exception tree of neuropod.

Every error the library raises derives from :class:`NeuropodError`. Classes
also derive from the built-in exception the original Neuropod raised in the
same situation (``ValueError`` for bad specs, inputs and self-test
mismatches, ``RuntimeError`` for failures while running), so code written
against the original keeps catching them. A model server answers each class
with the status in brackets (``neuropod.kserve.status``; 500 where none is
given)::

    NeuropodError
    ├── SpecError (ValueError)                       [400]  a bad problem definition
    ├── InputValidationError (ValueError)            [400]  inputs that break the spec
    │   └── RequestTooLargeError                     [413]
    ├── OutputValidationError (ValueError)           [500]  a model that breaks its spec
    ├── OptionError (ValueError)                     [400]  a bad load_neuropod option or setting
    ├── PackageError (ValueError)                           a package that cannot be read
    │   ├── ManifestError                                   files changed since packaging
    │   └── UnsafePackageError                              path escapes, untrusted pickle
    ├── BackendNotFoundError (ValueError)
    ├── FrameworkNotInstalledError (ImportError)
    ├── MissingExtraError (ImportError)                     a feature's extra is not installed (names it)
    ├── UntrustedPickleError (ValueError)                   a pickle not provably written by the caller
    ├── RequirementsError (RuntimeError)
    ├── VersionRangeError (RuntimeError)
    ├── FrameworkVersionError (RuntimeError)
    ├── EnvironmentBuildError (RuntimeError)
    ├── IsolationError (RuntimeError)                       a sandbox or container cannot be set up
    ├── TrustError (PermissionError)                        the trust policy refuses a package
    ├── ProblemMismatchError (ValueError)                   a model does not implement the problem
    ├── DatasetError (ValueError)
    ├── MetricError (ValueError)
    ├── TestMismatchError (ValueError)                      a failed self-test
    ├── InferenceError (RuntimeError)                       the model failed while running
    │   ├── WorkerCrashedError
    │   │   └── CallNotTaken                                the worker died idle; the call goes on (internal)
    │   ├── WorkerTimeoutError
    │   ├── WorkerError                                     a foreign exception in a worker
    │   ├── RemoteError                                     a server failed or answered nonsense
    │   └── ServerFailure                            [500]  what a client is told of a failure (a request id)
    ├── ModelNotFoundError (LookupError)             [404]
    ├── ModelNotReadyError (RuntimeError)            [503]
    │   └── ModelClosedError                         [503]  a call to a closed model
    ├── AuthenticationError (PermissionError)        [401]
    ├── ServerError (RuntimeError)                          a model server cannot start (a port in use)
    ├── WireFormatError (ValueError)                        a malformed worker message
    ├── SharedMemoryError (MemoryError)
    ├── ChannelClosed                                       a worker's channel closed (internal)
    ├── ChannelTimeout                                      nothing came on it in time (internal)
    └── ErrorReply                                          a worker answered a call with an error (internal)
"""

from __future__ import annotations

from typing import List, Optional

__all__ = [
    "NeuropodError",
    "SpecError",
    "InputValidationError",
    "OutputValidationError",
    "PackageError",
    "ManifestError",
    "UnsafePackageError",
    "UntrustedPickleError",
    "BackendNotFoundError",
    "FrameworkNotInstalledError",
    "MissingExtraError",
    "RequirementsError",
    "TestMismatchError",
    "InferenceError",
    "WorkerCrashedError",
    "WorkerTimeoutError",
    "CallNotTaken",
    "RemoteError",
    "ServerFailure",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelClosedError",
    "RequestTooLargeError",
    "AuthenticationError",
    "ServerError",
    "WorkerError",
    "WireFormatError",
    "SharedMemoryError",
    "ChannelClosed",
    "ChannelTimeout",
    "ErrorReply",
    "OptionError",
    "IsolationError",
    "TrustError",
    "VersionRangeError",
    "FrameworkVersionError",
    "EnvironmentBuildError",
    "ProblemMismatchError",
    "DatasetError",
    "MetricError",
]


class NeuropodError(Exception):
    """Root of every error raised by neuropod."""


class SpecError(NeuropodError, ValueError):
    """A problem definition (tensor spec) is invalid."""


class InputValidationError(NeuropodError, ValueError):
    """Inputs given to ``infer`` do not match the model's input spec."""


class OutputValidationError(NeuropodError, ValueError):
    """A model returned outputs that do not match its output spec."""


class PackageError(NeuropodError, ValueError):
    """A neuropod package is missing, malformed or cannot be read."""


class ManifestError(PackageError):
    """A package's files do not match the hashes in its manifest."""


class UnsafePackageError(PackageError):
    """A package asks for something unsafe (path escape, untrusted pickle)."""


class UntrustedPickleError(NeuropodError, ValueError):
    """A pickle this process will not unpickle: not provably written by its caller (``python -m neuropod.loader``)."""


class BackendNotFoundError(NeuropodError, ValueError):
    """No backend is registered for a package's platform."""


class FrameworkNotInstalledError(NeuropodError, ImportError):
    """The framework a backend needs is not installed in this environment."""


class MissingExtraError(NeuropodError, ImportError):
    """A feature needs an extra of ``neuropod-python`` that is not installed (the message names it)."""


class RequirementsError(NeuropodError, RuntimeError):
    """A Python package's pinned requirements are not met here."""


class TestMismatchError(NeuropodError, ValueError):
    """A package's self-test produced outputs that differ from the expected ones."""

    __test__ = False  # not a pytest test class despite the name


class InferenceError(NeuropodError, RuntimeError):
    """The model itself failed while running."""


class WorkerCrashedError(InferenceError):
    """An out-of-process worker died while serving a call.

    Attributes:
        returncode: the worker's exit status as ``subprocess`` reports it
            (negative: killed by that signal); None when unknown.
    """

    returncode: Optional[int] = None


class CallNotTaken(WorkerCrashedError):
    """An out-of-process worker died before it took the call (it was idle): the call may go to its replacement.

    Internal to the worker pool, which retries; ``error`` is the :class:`WorkerCrashedError` to raise when it
    cannot.
    """

    def __init__(self, error: WorkerCrashedError) -> None:
        super().__init__(str(error))
        self.error = error
        self.returncode = error.returncode


class WorkerTimeoutError(InferenceError):
    """An out-of-process worker did not answer within the call's timeout."""


class RemoteError(InferenceError):
    """A remote model server answered with an error."""


class ServerFailure(InferenceError):
    """A request failed on the server's side; the message holds only the request id (details are logged)."""


class WorkerError(InferenceError):
    """Code inside an out-of-process worker raised an exception neuropod does not define.

    (A neuropod error raised in the worker comes back as its own class.)

    Attributes:
        remote_type: the exception's type name in the worker.
        remote_traceback: the traceback text from the worker.
    """

    remote_type: str = ""
    remote_traceback: str = ""


class WireFormatError(NeuropodError, ValueError):
    """A control message between a parent and its worker is malformed."""


class SharedMemoryError(NeuropodError, MemoryError):
    """Shared memory for a tensor cannot be had (the shm filesystem is full or too small)."""


class ChannelClosed(NeuropodError):
    """The other end of a worker's control channel closed it (it exited or crashed).

    Internal: the out-of-process executor turns it into :class:`WorkerCrashedError`.
    """


class ChannelTimeout(NeuropodError):
    """No message arrived on a worker's control channel within the timeout.

    Internal: the out-of-process executor turns it into :class:`WorkerTimeoutError`.
    """


class ErrorReply(NeuropodError):
    """A worker answered a call with an error (internal: the pool rebuilds the error it reports).

    ``texts``: the error's type name, message, traceback and module, as the worker sent them.
    """

    def __init__(self, texts: List[str]) -> None:
        super().__init__(texts[1] if len(texts) > 1 else "")
        self.texts = texts


class ModelNotFoundError(NeuropodError, LookupError):
    """A server holds no model (or no version of it) by the name asked for."""


class ModelNotReadyError(NeuropodError, RuntimeError):
    """A served model cannot take requests now (loading, its worker died, shutting down)."""


class ModelClosedError(ModelNotReadyError):
    """A model was called after ``close()``."""


class RequestTooLargeError(InputValidationError):
    """A request to a server is larger than its configured limit."""


class AuthenticationError(NeuropodError, PermissionError):
    """A request to a server lacks the bearer token it requires, or has a wrong one."""


class ServerError(NeuropodError, RuntimeError):
    """A model server cannot start: a port cannot be bound, or the server was started twice."""


class OptionError(NeuropodError, ValueError):
    """A configuration problem: an unknown option of ``load_neuropod`` or a server, or a wrong value."""


class VersionRangeError(NeuropodError, RuntimeError):
    """A ``platform_version_semver`` (or other version range) is not a valid npm-style range."""


class FrameworkVersionError(NeuropodError, RuntimeError):
    """The framework version available does not satisfy a package's ``platform_version_semver``.

    Attributes:
        range_text: the range the package asks for.
        found: what was found (``"torch 2.13.0"``), or "" when nothing was.
    """

    def __init__(self, message: str, range_text: str = "", found: str = "") -> None:
        super().__init__(message)
        self.range_text = range_text
        self.found = found


class EnvironmentBuildError(NeuropodError, RuntimeError):
    """An environment for a package could not be built or probed.

    Attributes:
        step: the build step that failed (``resolving``, ``installing`` ...), or "".
        log_path: the kept build log, or "".
    """

    def __init__(self, message: str, step: str = "", log_path: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.log_path = log_path


class ProblemMismatchError(NeuropodError, ValueError):
    """A model does not implement the problem it is checked or compared against."""


class DatasetError(NeuropodError, ValueError):
    """A dataset cannot be read, or its fields do not fit the problem."""


class MetricError(NeuropodError, ValueError):
    """A metric is unknown or misconfigured, or the data does not fit it."""


class IsolationError(NeuropodError, RuntimeError):
    """A sandbox or container for a worker cannot be set up (a missing tool, a refused namespace)."""


class TrustError(NeuropodError, PermissionError):
    """The trust policy refuses a package as loaded, or a signature does not verify."""
