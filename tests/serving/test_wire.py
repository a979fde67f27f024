"""The wire layer: our KServe v2 proto, tensor encodings, and the exception -> status table."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from conftest import require
from neuropod.errors import (
    AuthenticationError,
    InferenceError,
    InputValidationError,
    ModelClosedError,
    ModelNotFoundError,
    ModelNotReadyError,
    OutputValidationError,
    RemoteError,
    RequestTooLargeError,
)

require("google.protobuf")

from neuropod.kserve import proto  # noqa: E402
from neuropod.kserve.datatypes import (  # noqa: E402
    contents_values,
    decode_contents,
    decode_json,
    decode_raw,
    encode_raw,
)
from neuropod.kserve.status import error_class_for_grpc, error_class_for_http, status_for  # noqa: E402


def test_committed_descriptor_matches_the_proto() -> None:
    require("grpc_tools")
    from neuropod.kserve.proto import compile as proto_compile
    from neuropod.kserve.proto._descriptor import SERIALIZED_FILE

    assert proto_compile.compile_descriptor() == SERIALIZED_FILE, "run: python -m neuropod.kserve.proto.compile"


def test_our_messages_match_tritons_field_for_field() -> None:
    """Every field we declare has the same number, type and label in tritonclient's copy of the protocol."""
    service_pb2 = require("tritonclient.grpc.service_pb2")
    names = [
        "ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest", "ModelReadyResponse",
        "ServerMetadataResponse", "ModelMetadataRequest", "ModelMetadataResponse", "InferParameter",
        "InferTensorContents", "ModelInferRequest", "ModelInferResponse",
    ]  # fmt: skip

    def compare(ours: object, theirs: object) -> None:
        for field in ours.fields:  # type: ignore[attr-defined]
            other = theirs.fields_by_name[field.name]  # type: ignore[attr-defined]
            assert (field.number, field.type, field.is_repeated) == (other.number, other.type, other.is_repeated), (
                field.full_name
            )
        for nested in ours.nested_types:  # type: ignore[attr-defined]
            compare(nested, theirs.nested_types_by_name[nested.name])  # type: ignore[attr-defined]

    for name in names:
        compare(getattr(proto, name).DESCRIPTOR, getattr(service_pb2, name).DESCRIPTOR)


def test_raw_bytes_round_trip() -> None:
    words = np.array([["", "héllo"], ["a\x00b", "z" * 300]])
    raw = encode_raw(words)
    assert raw[:4] == struct.pack("<I", 0)
    back = decode_raw("BYTES", [2, 2], raw, "w")
    assert back.dtype.kind == "U"
    np.testing.assert_array_equal(back, words)
    numbers = np.arange(6, dtype=">i4").reshape(2, 3)  # big-endian in, little-endian on the wire
    raw = encode_raw(numbers)
    assert raw[:4] == struct.pack("<i", 0) and raw[4:8] == struct.pack("<i", 1)
    np.testing.assert_array_equal(decode_raw("INT32", [2, 3], raw, "n"), numbers)


@pytest.mark.parametrize(
    "datatype, shape, data, message",
    [
        ("BYTES", [2], struct.pack("<I", 1) + b"a", "ends after 1 of 2"),
        ("BYTES", [1], struct.pack("<I", 99) + b"abc", "claims 99 bytes, only 3 remain"),
        ("BYTES", [1], struct.pack("<I", 1) + b"ab", "1 bytes past"),
        ("BYTES", [1], b"\x01\x00", "ends after 0 of 1"),
        ("BYTES", [1], struct.pack("<I", 1) + b"\xff", "not valid UTF-8"),
        ("FP32", [2, 2], b"\x00" * 12, "needs 16 raw bytes, got 12"),
        ("FP32", [2, -1], b"", "non-negative ints"),
        ("FP32", [1] * 33, b"\x00" * 4, "above the limit"),
        ("COMPLEX", [1], b"", "unknown datatype 'COMPLEX'"),
    ],
)
def test_malformed_raw_tensors_are_refused(datatype: str, shape: list, data: bytes, message: str) -> None:
    with pytest.raises(InputValidationError, match=message):
        decode_raw(datatype, shape, data, "t")


def test_typed_contents_and_json() -> None:
    contents = proto.InferTensorContents()
    field, values = contents_values(np.array([[1, 2], [3, 4]], dtype=np.uint16))
    getattr(contents, field).extend(values)
    back = decode_contents("UINT16", [2, 2], contents, "u")
    assert back.dtype == np.uint16 and back.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InputValidationError, match="send it raw"):
        decode_contents("FP16", [1], contents, "h")
    assert decode_json("INT64", [2, 2], [[1, 2], [3, 4]], "j").tolist() == [[1, 2], [3, 4]]
    assert decode_json("BOOL", [2], [True, False], "b").dtype == bool
    with pytest.raises(InputValidationError, match="list of true/false"):
        decode_json("BOOL", [1], [1], "b")
    with pytest.raises(InputValidationError, match="list of numbers"):
        decode_json("FP32", [1], ["1"], "f")
    with pytest.raises(InputValidationError, match="list of strings"):
        decode_json("BYTES", [1], [1], "s")
    with pytest.raises(InputValidationError, match="does not fit INT8: 300"):
        decode_json("INT8", [1], [300], "i")
    with pytest.raises(InputValidationError, match="does not fit UINT8: -1"):
        decode_json("UINT8", [2], [1, -1], "u")
    wide = proto.InferTensorContents()
    wide.int_contents.extend([1, 70000])
    with pytest.raises(InputValidationError, match="does not fit INT16: 70000"):
        decode_contents("INT16", [2], wide, "i")
    with pytest.raises(InputValidationError, match="needs 4 values, data holds 3"):
        decode_json("FP64", [2, 2], [1, 2, 3], "f")


def test_status_comes_from_the_exception_class() -> None:
    cases = {
        InputValidationError("x"): (400, "INVALID_ARGUMENT"),
        RequestTooLargeError("x"): (413, "RESOURCE_EXHAUSTED"),
        ModelNotFoundError("x"): (404, "NOT_FOUND"),
        ModelNotReadyError("x"): (503, "UNAVAILABLE"),
        ModelClosedError("x"): (503, "UNAVAILABLE"),  # was an InputValidationError: 400
        AuthenticationError("x"): (401, "UNAUTHENTICATED"),
        OutputValidationError("x"): (500, "INTERNAL"),  # a ValueError, but the model's fault
        InferenceError("x"): (500, "INTERNAL"),
        ZeroDivisionError(): (500, "INTERNAL"),
    }
    for exc, expected in cases.items():
        status = status_for(exc)
        assert (status.http, status.grpc) == expected, type(exc).__name__


def test_the_client_reads_a_status_back_into_the_class_the_server_answered_for() -> None:
    answered = (InputValidationError, RequestTooLargeError, ModelNotFoundError, ModelNotReadyError, AuthenticationError)
    for cls in answered:
        status = status_for(cls("x"))
        assert error_class_for_http(status.http) is cls
        assert error_class_for_grpc(status.grpc) is cls
    assert error_class_for_http(500) is RemoteError and error_class_for_grpc("INTERNAL") is RemoteError


@pytest.mark.parametrize(
    "shape, message",
    [
        ([0, 10**29], "tensor 'e': shape \\[0, 10+\\] is too large"),
        ([0, 2**40, 2], "is too large"),
        ([2**63], "is too large"),
        ([0, -3], "non-negative ints"),
    ],
)
def test_shapes_too_large_for_numpy_are_refused_even_when_empty(shape: list, message: str) -> None:
    """An empty tensor carries no data, but numpy still cannot take every shape: refused, not a crash."""
    for decode, data in ((decode_json, []), (decode_raw, b"")):
        with pytest.raises(InputValidationError, match=message):
            decode("FP32", shape, data, "e")
    assert decode_json("FP32", [0, 2**20], [], "e").shape == (0, 2**20)
    assert decode_raw("INT64", [3, 0, 2**30], b"", "e").shape == (3, 0, 2**30)


def test_integer_datatypes_refuse_fractions() -> None:
    with pytest.raises(InputValidationError, match="tensor 'i': INT32 takes whole numbers, got 1.7"):
        decode_json("INT32", [2], [1.7, 2.9], "i")
    with pytest.raises(InputValidationError, match="tensor 'u': UINT8 takes whole numbers, got nan"):
        decode_json("UINT8", [1], [float("nan")], "u")
    with pytest.raises(InputValidationError, match="tensor 'b': INT64 data must be a list of numbers"):
        decode_json("INT64", [1], [True], "b")
    whole = decode_json("INT64", [3], [2.0, -1.0, 2**62], "w")  # whole floats are exact: taken as ints
    assert whole.dtype == np.int64 and whole.tolist() == [2, -1, 2**62]
    with pytest.raises(InputValidationError, match="does not fit UINT64: 1e\\+30"):
        decode_json("UINT64", [1], [1e30], "u")


def test_float_datatypes_refuse_values_that_would_become_infinite() -> None:
    require("ml_dtypes")
    for datatype, value in (("FP32", 1e300), ("FP16", 1e5), ("BF16", 1e300)):
        with pytest.raises(InputValidationError, match=f"tensor 'f': .* out of the range of {datatype}"):
            decode_json(datatype, [2], [1.0, value], "f")
    contents = proto.InferTensorContents()
    contents.fp64_contents.extend([1e300])
    assert decode_contents("FP64", [1], contents, "f").tolist() == [1e300]  # in range for FP64
    # Infinity the client sent on purpose stays infinity.
    assert np.isinf(decode_json("FP32", [1], [float("inf")], "f")).all()
    np.testing.assert_array_equal(decode_json("FP16", [2], [0.5, 65504.0], "f"), np.array([0.5, 65504], np.float16))
