"""The fast wire codec produces and reads exactly the messages of the protobuf runtime."""
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from dpsr_tf.serving import wire

_CASES = [
    (np.float32, types_pb2.DT_FLOAT, "float_val", [0.5, -1.25, 3e38, 0.0]),
    (np.float64, types_pb2.DT_DOUBLE, "double_val", [1e-300, -2.5]),
    (np.int32, types_pb2.DT_INT32, "int_val", [0, 1, 127, 128, -1, 2 ** 31 - 1, -2 ** 31]),
    (np.int64, types_pb2.DT_INT64, "int64_val", [0, 300, -5, 2 ** 62, -2 ** 63]),
    (np.bool_, types_pb2.DT_BOOL, "bool_val", [True, False, True]),
    (np.uint8, types_pb2.DT_UINT8, "int_val", [0, 255]),
    (np.uint64, types_pb2.DT_UINT64, "uint64_val", [0, 2 ** 64 - 1]),
]


def _slow(array, dtype, field):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                  for s in array.shape)
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


@pytest.mark.parametrize("np_dtype, dtype, field, values", _CASES)
@pytest.mark.parametrize("shape", [None, (1, -1), ()])
def test_encode_and_decode_match_the_protobuf_runtime(np_dtype, dtype, field, values, shape):
    array = np.array(values, dtype=np_dtype)
    if shape == ():
        array = array[:1].reshape(())
    elif shape is not None:
        array = array.reshape(shape)
    fast = tensor_pb2.TensorProto.FromString(wire.encode_numeric(array))
    assert fast == _slow(array, dtype, field)
    decoded = wire.decode_numeric(_slow(array, dtype, field))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_random_varints_round_trip():
    rng = np.random.default_rng(0)
    values = rng.integers(-2 ** 63, 2 ** 63 - 1, 2000, dtype=np.int64)
    proto = tensor_pb2.TensorProto.FromString(wire.encode_numeric(values))
    assert list(proto.int64_val) == values.tolist()
    np.testing.assert_array_equal(wire.decode_numeric(proto), values)


def test_fast_path_declines_what_it_does_not_handle():
    assert wire.encode_numeric(np.array([b"a"], dtype=object)) is None
    content = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 4)
    assert wire.decode_numeric(content) is None
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[7])
    short.tensor_shape.dim.add(size=3)  # one value fills three: TF's rule, the slow path
    assert wire.decode_numeric(short) is None


def test_fields_reads_every_wire_type_as_hand_encoded():
    # field 1 varint 150 (the protobuf guide's example: 08 96 01); field 2 length-delimited
    # "hi"; field 3 fixed32; field 4 fixed64; then a nested message read through its span.
    data = (b"\x08\x96\x01" + b"\x12\x02hi" + b"\x1d" + b"\x01\x02\x03\x04"
            + b"\x21" + bytes(range(8)) + b"\x2a\x03\x08\x7f\x10")
    got = list(wire.fields(data))
    assert got == [(1, 0, 150), (2, 2, (5, 7)), (3, 5, (8, 12)), (4, 1, (13, 21)),
                   (5, 2, (23, 26))]
    assert data[5:7] == b"hi" and data[8:12] == b"\x01\x02\x03\x04"
    nested = list(wire.fields(data, 23, 25))  # "08 7f": field 1 = 127
    assert nested == [(1, 0, 127)]
    assert list(wire.fields(data, limit=2)) == got[:2]


def test_fields_agree_with_the_protobuf_runtime_on_a_tensor():
    proto = _slow(np.arange(6, dtype=np.float32).reshape(2, 3), types_pb2.DT_FLOAT, "float_val")
    data = proto.SerializeToString()
    by_number = {number: (wire_type, value) for number, wire_type, value in wire.fields(data)}
    assert by_number[1] == (0, types_pb2.DT_FLOAT)
    a, b = by_number[2][1]
    assert tensor_shape_pb2.TensorShapeProto.FromString(data[a:b]) == proto.tensor_shape
    a, b = by_number[5][1]
    np.testing.assert_array_equal(np.frombuffer(data[a:b], np.float32), np.arange(6))


@pytest.mark.parametrize("data, problem", [
    (b"\x08", "truncated varint"),            # a key with no value
    (b"\x12\x05abc", "truncated field"),      # 5 bytes declared, 3 sent
    (b"\x1d\x01\x02", "truncated field"),     # fixed32 cut short
    (b"\x08" + b"\xff" * 10 + b"\x01", "varint too long"),
    (b"\x0b", "unsupported wire type 3"),     # groups are not read
])
def test_fields_refuse_malformed_bytes(data, problem):
    with pytest.raises(ValueError, match=problem):
        list(wire.fields(data))
