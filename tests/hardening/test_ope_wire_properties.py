"""Issue 13 property tests: the OPE wire codec round-trips every message and refuses garbage cleanly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from property_helpers import cases, outcome  # noqa: E402

from neuropod.errors import WireFormatError  # noqa: E402
from neuropod.ope import wire  # noqa: E402

_names = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=12)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_tensor = st.builds(
    wire.TensorRef,
    _names,
    st.sampled_from(sorted({wire.dtype_code(np.dtype(n)) for n in wire.DTYPE_NAMES if n != "bfloat16"} | {14})),
    st.lists(st.integers(0, 2**40), max_size=6).map(tuple),  # rank 32 and over: the crossing test
    _u32,
    _u64,
    _u64,
    st.sampled_from([wire.OWNER_SENDER, wire.OWNER_RECEIVER]),
)
_message = st.builds(
    wire.Message,
    st.sampled_from(sorted(wire.Kind.ALL)),
    _u64,
    texts=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=40), max_size=4),
    new_segments=st.lists(st.tuples(st.integers(1, 2**32 - 1), _u64), max_size=4),
    drop_segments=st.lists(_u32, max_size=4),
    release_segments=st.lists(_u32, max_size=4),
    tensors=st.lists(_tensor, max_size=3),
    inline=st.binary(max_size=64).map(bytearray),
)


def _same(a: wire.Message, b: wire.Message) -> None:
    assert (a.kind, a.request_id, list(a.texts)) == (b.kind, b.request_id, list(b.texts))
    assert [tuple(s) for s in a.new_segments] == [tuple(s) for s in b.new_segments]
    assert list(a.drop_segments) == list(b.drop_segments) and list(a.release_segments) == list(b.release_segments)
    assert [(t.name, t.dtype_code, tuple(t.shape), t.segment, t.offset, t.nbytes, t.owner) for t in a.tensors] == [
        (t.name, t.dtype_code, tuple(t.shape), t.segment, t.offset, t.nbytes, t.owner) for t in b.tensors
    ]
    assert bytes(a.inline) == bytes(b.inline)


@cases(2000)
@given(message=_message)
def test_every_message_round_trips(message):
    data = outcome(lambda: wire.encode(message))
    assert not isinstance(data, Exception), data  # these messages are within every limit
    _same(wire.decode(data), message)


@cases(4000)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_give_a_message_or_a_wire_format_error(data):
    result = outcome(lambda: wire.decode(data))
    assert isinstance(result, (wire.Message, WireFormatError)), result


@cases(2000)
@given(message=_message, edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_mutated_message_gives_a_message_or_a_wire_format_error(message, edits):
    data = bytearray(wire.encode(message))
    for position, value in edits:
        data[position % len(data)] = value
    result = outcome(lambda: wire.decode(bytes(data)))
    assert isinstance(result, (wire.Message, WireFormatError)), result


@cases(1500)
@given(buffer=st.binary(max_size=120), shape=st.lists(st.integers(0, 5), max_size=3).map(tuple))
def test_string_blocks_from_anywhere_decode_or_refuse(buffer, shape):
    result = outcome(lambda: wire.decode_strings("s", memoryview(buffer), shape))
    assert isinstance(result, (np.ndarray, WireFormatError)), result


@cases(500)
@given(name=st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=4)), ndim=st.integers(0, 64))
def test_what_a_sender_may_send_is_exactly_what_the_decoder_accepts(name, ndim):
    """The sender's check (crossing_problem) and the decoder agree: a refused tensor is never sent."""
    problem = wire.crossing_problem(name, ndim)
    if problem:
        return
    ref = wire.TensorRef(name, wire.dtype_code(np.dtype("float32")), (1,) * ndim, 0, 0, 4, wire.OWNER_SENDER)
    decoded = wire.decode(wire.encode(wire.Message(wire.Kind.INFER, 1, tensors=[ref])))
    assert decoded.tensors[0].name == name and len(decoded.tensors[0].shape) == ndim
