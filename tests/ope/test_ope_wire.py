"""The control-message codec: round trips, and clean errors on anything malformed."""

from __future__ import annotations

import random
import struct
from typing import List

import numpy as np
import pytest

from neuropod.errors import WireFormatError
from neuropod.ope import wire
from neuropod.ope.shm import SegmentPool
from neuropod.ope.wire import InlineArea, read_tensor, write_tensor


def sample_message() -> wire.Message:
    return wire.Message(
        kind=wire.Kind.INFER,
        request_id=2**40 + 3,
        texts=["ValueError", "bad ünïcode", ""],
        new_segments=[(1, 4096), (7, 1 << 26)],
        drop_segments=[3, 4],
        release_segments=[9],
        tensors=[
            wire.TensorRef("x", wire.dtype_code(np.dtype("float32")), (2, 3), 1, 0, 24),
            wire.TensorRef("scalar", wire.dtype_code(np.dtype("int64")), (), 7, 64, 8, wire.OWNER_RECEIVER),
            wire.TensorRef("empty", wire.dtype_code(np.dtype("uint8")), (0, 5), wire.NO_SEGMENT, 0, 0),
        ],
    )


def test_round_trip_keeps_every_field():
    message = sample_message()
    assert wire.decode(wire.encode(message)) == message


def test_every_dtype_has_a_stable_code():
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        assert wire.dtype_of_code(wire.dtype_code(np.dtype(name))) == np.dtype(name)
    for name in ("float16", "float32", "float64"):
        assert wire.dtype_of_code(wire.dtype_code(np.dtype(name))) == np.dtype(name)
    assert wire.dtype_code(np.dtype(">f4")) == wire.dtype_code(np.dtype("<f4"))
    assert wire.dtype_code(np.dtype("U3")) == wire.STRING_CODE
    with pytest.raises(WireFormatError, match="complex128"):
        wire.dtype_code(np.dtype("complex128"))


def test_bad_header_fields_are_named():
    data = bytearray(wire.encode(sample_message()))
    with pytest.raises(WireFormatError, match="magic"):
        wire.decode(b"XXXX" + bytes(data[4:]))
    bumped = bytearray(data)
    struct.pack_into("<H", bumped, 4, wire.VERSION + 1)
    with pytest.raises(WireFormatError, match="version"):
        wire.decode(bytes(bumped))
    with pytest.raises(WireFormatError, match="body"):
        wire.decode(bytes(data) + b"\0")
    with pytest.raises(WireFormatError, match="exceeds"):
        wire.decode(b"\0" * (wire.MAX_MESSAGE_BYTES + 1))


def test_truncated_messages_fail_cleanly():
    data = wire.encode(sample_message())
    for cut in range(len(data)):
        with pytest.raises(WireFormatError):
            wire.decode(data[:cut])


def test_random_and_mutated_messages_only_raise_wire_errors():
    rng = random.Random(1234)
    valid = wire.encode(sample_message())
    decoded = 0
    for trial in range(4000):
        if trial % 2:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, rng.randint(1, 7), 0, 0)
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
            data = bytearray(header[:-4] + struct.pack("<I", len(body)) + body)
        try:
            message = wire.decode(bytes(data))
        except WireFormatError:
            continue
        decoded += 1
        # Whatever decodes must still be checked against real segment sizes without crashing.
        for ref in message.tensors:
            try:
                wire.check_tensor_ref(ref, 4096)
            except WireFormatError:
                pass
    assert decoded < 4000  # most mutations are caught


def test_refs_are_checked_against_the_segment():
    code = wire.dtype_code(np.dtype("float32"))
    wire.check_tensor_ref(wire.TensorRef("x", code, (1024,), 1, 0, 4096), 4096)
    with pytest.raises(WireFormatError, match="outside segment"):
        wire.check_tensor_ref(wire.TensorRef("x", code, (1024,), 1, 8, 4096), 4096)
    with pytest.raises(WireFormatError, match="outside segment"):
        wire.check_tensor_ref(wire.TensorRef("x", code, (1,), 1, 2**63, 4), 4096)
    with pytest.raises(WireFormatError, match="needs 8 bytes"):
        wire.check_tensor_ref(wire.TensorRef("x", code, (2,), 1, 0, 4), 4096)
    with pytest.raises(WireFormatError, match="offsets table"):
        wire.check_tensor_ref(wire.TensorRef("s", wire.STRING_CODE, (10,), 1, 0, 16), 4096)


def test_tensors_round_trip_through_a_segment():
    pool = SegmentPool()
    try:
        arrays = {
            "f": np.arange(12, dtype=">f8").reshape(3, 4),  # big-endian in, little-endian out
            "strided": np.arange(20, dtype=np.int16)[::3],
            "b": np.array([True, False]),
            "s": np.array([["ä", ""], ["long string", "x"]]),
            "e": np.zeros((0, 3), np.float32),
            "es": np.array([], dtype="U1"),
        }
        for name, array in arrays.items():
            ref, segment = write_tensor(name, array, pool)
            decoded = wire.decode(wire.encode(wire.Message(wire.Kind.RESULT, tensors=[ref]))).tensors[0]
            out = read_tensor(decoded, segment.memory if segment else None)
            assert out.shape == array.shape
            assert np.array_equal(out, array)
    finally:
        pool.close()


def test_corrupt_string_blocks_fail_cleanly():
    pool = SegmentPool()
    try:
        ref, segment = write_tensor("s", np.array(["abc", "de"]), pool)
        assert segment is not None
        offsets = np.frombuffer(segment.memory, dtype="<u8", count=3)
        rng = random.Random(5)
        for bad in ([0, 9, 5], [1, 3, 5], [0, 3, 2**63], [0, 2**64 - 1, 5]):
            offsets[:] = bad
            with pytest.raises(WireFormatError, match="offsets"):
                read_tensor(ref, segment.memory)
        offsets[:] = [0, 3, 5]
        segment.memory[24:27] = b"\xff\xfe\xfd"
        with pytest.raises(WireFormatError, match="UTF-8"):
            read_tensor(ref, segment.memory)
        for _ in range(300):
            for i in range(3):
                offsets[i] = rng.choice([0, 1, 3, 5, 6, 2**40, rng.randrange(2**64)])
            try:
                read_tensor(ref, segment.memory)
            except WireFormatError:
                pass
        del offsets
    finally:
        pool.close()


def test_small_tensors_round_trip_inline_up_to_the_budget():
    pool = SegmentPool()
    try:
        area = InlineArea()
        arrays = {
            "f": np.arange(12, dtype=">f8").reshape(3, 4),  # big-endian in, little-endian out
            "strided": np.arange(20, dtype=np.int16)[::3],
            "b": np.array([True, False, True]),  # 3 bytes: the next one must still be aligned
            "s": np.array([["ä", ""], ["long string", "x"]]),
            "scalar": np.array(2.5, dtype=np.float32),
        }
        refs = []
        for name, array in arrays.items():
            ref, segment = write_tensor(name, array, pool, area)
            assert segment is None and ref.segment == wire.NO_SEGMENT and ref.offset % wire.INLINE_ALIGN == 0
            refs.append(ref)
        message = wire.decode(wire.encode(wire.Message(wire.Kind.RESULT, tensors=refs, inline=area.getvalue())))
        assert isinstance(message.inline, bytearray)
        for ref, array in zip(message.tensors, arrays.values()):
            out = read_tensor(ref, message.inline)
            assert out.shape == array.shape and np.array_equal(out, array)
            if out.dtype.kind != "U":
                assert out.flags.writeable and out.__array_interface__["data"][0] % wire.INLINE_ALIGN == 0
        # Past one tensor's limit, or the message's budget, tensors go through segments.
        ref, segment = write_tensor("big", np.zeros(wire.INLINE_TENSOR_BYTES + 1, np.uint8), pool, InlineArea())
        assert segment is not None
        full = InlineArea()
        placed = 0
        while True:
            ref, segment = write_tensor("t", np.zeros(wire.INLINE_TENSOR_BYTES, np.uint8), pool, full)
            if segment is not None:
                break
            placed += 1
        assert placed == wire.INLINE_MESSAGE_BYTES // wire.INLINE_TENSOR_BYTES - 1
        assert full.size <= wire.INLINE_MESSAGE_BYTES
    finally:
        pool.close()


def test_inline_refs_are_checked_against_the_inline_area():
    code = wire.dtype_code(np.dtype("float32"))
    outside = wire.TensorRef("x", code, (4,), wire.NO_SEGMENT, 8, 16)
    with pytest.raises(WireFormatError, match="outside segment"):
        read_tensor(outside, bytearray(16))
    with pytest.raises(WireFormatError, match="has bytes but no segment"):
        read_tensor(outside, None)
    data = bytearray(wire.encode(wire.Message(wire.Kind.RESULT, tensors=[outside], inline=bytes(24))))
    inline_length_at = wire.HEADER.size + 12  # after the four empty lists
    assert struct.unpack_from("<I", data, inline_length_at) == (24,)
    struct.pack_into("<I", data, inline_length_at, len(data))  # more than the whole message
    with pytest.raises(WireFormatError, match="inline area of"):
        wire.decode(bytes(data))
    struct.pack_into("<I", data, inline_length_at, 25)  # one byte of the tensors counted as inline
    with pytest.raises(WireFormatError, match="truncated"):
        wire.decode(bytes(data))


def test_equal_tensor_sections_decode_to_equal_messages_with_their_own_inline_bytes():
    code = wire.dtype_code(np.dtype("float32"))
    refs = [wire.TensorRef("x", code, (1,), wire.NO_SEGMENT, 0, 4)]
    first = wire.decode(wire.encode(wire.Message(wire.Kind.INFER, 1, tensors=refs, inline=b"\x01\x00\x00\x00")))
    second = wire.decode(wire.encode(wire.Message(wire.Kind.INFER, 2, tensors=refs, inline=b"\x02\x00\x00\x00")))
    assert first.tensors == second.tensors == refs and first.tensors is not second.tensors
    assert read_tensor(first.tensors[0], first.inline)[0] != read_tensor(second.tensors[0], second.inline)[0]
    assert (first.request_id, second.request_id) == (1, 2)


def test_one_codec_packs_the_usual_call_from_its_cache_and_anything_else_in_full():
    pool = SegmentPool()
    placed: List[str] = []

    def place(name, array, inline, message):
        placed.append(name)
        ref, segment = write_tensor(name, array, pool, inline)
        if segment is not None:
            message.new_segments.append((segment.id, segment.size))
        return ref

    try:
        small = {"x": np.arange(3, dtype=np.float32), "y": np.ones((2, 2), np.int64)}
        data, message = wire.pack(wire.Kind.INFER, 7, small, place)
        assert message is None and placed == []  # the inline cache: nothing placed, no message built
        kind, request_id, arrays, full = wire.unpack(data, [])
        assert (kind, request_id, full) == (wire.Kind.INFER, 7, None)
        assert all(np.array_equal(arrays[name], array) for name, array in small.items())

        # A large input goes where the side places it; the receiver gets the references.
        mixed = {"big": np.zeros(wire.INLINE_TENSOR_BYTES + 1, np.uint8), "s": np.array(["a", "bc"])}
        data, message = wire.pack(wire.Kind.INFER, 8, mixed, place)
        assert message is not None and placed == ["big", "s"] and len(message.new_segments) == 1
        with pytest.raises(WireFormatError, match="announces 1 segments but carries 0 descriptors"):
            wire.unpack(data, [])
        # What else a message carries (here a drop) takes it off the cached path, even for small arrays.
        placed.clear()
        data, message = wire.pack(
            wire.Kind.INFER, 9, small, place, message=wire.Message(wire.Kind.INFER, 9, drop_segments=[5])
        )
        assert message is not None and placed == ["x", "y"]
        kind, request_id, arrays, full = wire.unpack(data, [])
        assert arrays is None and full is not None and [ref.name for ref in full.tensors] == ["x", "y"]
        assert np.array_equal(read_tensor(full.tensors[1], full.inline), small["y"])
    finally:
        pool.close()


def test_every_layout_passes_the_one_header_check():
    from neuropod.ope import layouts

    for layout, good in (
        (layouts.MESSAGE, wire.encode(wire.Message(wire.Kind.HELLO, 1, texts=["x"]))),
        (layouts.ZYGOTE, layouts.encode_zygote(layouts.ZygoteKind.EXITED, 3, -9)),
    ):
        layout.check(good)
        with pytest.raises(WireFormatError, match="magic"):
            layout.check(b"XXXX" + good[4:])
        with pytest.raises(WireFormatError, match="shorter than its"):
            layout.check(good[:3])
        with pytest.raises(WireFormatError, match="exceeds"):
            layout.check(good + bytes(layout.max_bytes))
    with pytest.raises(WireFormatError, match="exceeds"):  # a mailbox's length word, before anything is copied
        layouts.MESSAGE.check_size(layouts.MAX_MESSAGE_BYTES + 1)
