"""Issue 13 property tests: the KServe v2 request decoders (JSON, binary extension, protobuf) over hostile requests.

Whatever a client sends, decoding gives tensors or a NeuropodError (an
undecodable protobuf is refused at the protocol level, as DecodeError, which
the gRPC adapter turns into INVALID_ARGUMENT), never another exception.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from property_helpers import cases, outcome  # noqa: E402

from conftest import require  # noqa: E402
from neuropod.errors import NeuropodError  # noqa: E402
from neuropod.kserve import HEADER_LENGTH_HEADER, rest  # noqa: E402

_DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]
_DATATYPES += ["BF16", "BYTES", "fp32", "", "COMPLEX64"]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
_shape = st.one_of(
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.one_of(st.integers(-(2**63), 2**64), st.floats(), st.text(max_size=2), st.none()), max_size=3),
)


def _entry(data_strategy):
    return st.fixed_dictionaries(
        {
            "name": st.one_of(st.sampled_from(["x", "y"]), st.text(max_size=4)),
            "datatype": st.sampled_from(_DATATYPES),
            "shape": _shape,
        },
        optional={
            "data": data_strategy,
            "parameters": st.one_of(
                st.dictionaries(
                    st.sampled_from(["binary_data_size", "x"]), st.one_of(st.integers(-2, 40), _scalars), max_size=2
                ),
                _scalars,
            ),
        },
    )


_document = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(_entry(_json_values), max_size=3), _json_values)},
    optional={"outputs": _json_values, "id": _json_values, "parameters": _json_values},
)


def _decode_rest(body: bytes, header_length):
    document, tail = rest.split_body(body, header_length)
    return rest.decode_tensors(document.get("inputs"), tail, "input")


@cases(1500)
@given(
    body=st.binary(max_size=200), header_length=st.one_of(st.none(), st.text(max_size=4), st.integers(-5, 250).map(str))
)
def test_arbitrary_bodies_decode_or_refuse(body, header_length):
    result = outcome(lambda: _decode_rest(body, header_length))
    assert isinstance(result, (dict, NeuropodError)), result


@cases(2500)
@given(document=_document)
def test_json_requests_decode_or_refuse(document):
    body = json.dumps(document).encode()
    result = outcome(lambda: _decode_rest(body, None))
    if isinstance(result, dict):  # what decodes is what the request said
        for entry in document["inputs"]:
            assert list(result[entry["name"]].shape) == entry["shape"]


@cases(1500)
@given(document=_document, tail=st.binary(max_size=64), slack=st.integers(-3, 3))
def test_binary_extension_requests_decode_or_refuse(document, tail, slack):
    head = json.dumps(document).encode()
    body = head + tail
    result = outcome(lambda: _decode_rest(body, str(len(head) + slack)))
    assert isinstance(result, (dict, NeuropodError)), result


def _grpc_decoder():
    require("grpc")
    from google.protobuf.message import DecodeError

    from neuropod.kserve import proto
    from neuropod.serving.grpc_adapter import request_from_message

    return proto, request_from_message, DecodeError


@cases(1500)
@given(body=st.binary(max_size=200))
def test_arbitrary_protobuf_bytes_decode_or_refuse(body):
    proto, request_from_message, DecodeError = _grpc_decoder()
    result = outcome(lambda: request_from_message(proto.ModelInferRequest.FromString(body)), also=(DecodeError,))
    assert not isinstance(result, Exception) or isinstance(result, (NeuropodError, DecodeError)), result


@cases(1500)
@given(
    tensors=st.lists(
        st.tuples(
            st.sampled_from(["x", "y", ""]),
            st.sampled_from(_DATATYPES),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
            st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6),
            st.lists(st.floats(width=32), max_size=6),
            st.lists(st.binary(max_size=4), max_size=3),
        ),
        max_size=3,
    ),
    raw=st.lists(st.binary(max_size=40), max_size=3),
)
def test_protobuf_requests_decode_or_refuse(tensors, raw):
    proto, request_from_message, DecodeError = _grpc_decoder()
    request = proto.ModelInferRequest(model_name="m")
    for name, datatype, shape, ints, floats, strings in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        tensor.contents.int_contents.extend(ints)
        tensor.contents.fp32_contents.extend(floats)
        tensor.contents.bytes_contents.extend(strings)
    request.raw_input_contents.extend(raw)
    body = request.SerializeToString()
    result = outcome(lambda: request_from_message(proto.ModelInferRequest.FromString(body)))
    if not isinstance(result, Exception):
        assert all(isinstance(array, np.ndarray) for array in result.inputs.values())


def test_the_binary_header_name_is_the_one_the_decoder_reads():
    assert HEADER_LENGTH_HEADER.lower() == "inference-header-content-length"
