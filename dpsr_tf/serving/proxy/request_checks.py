"""What the proxy refuses itself instead of fanning it out: a Predict request that every model
server would refuse at its input limits (dpsr_tf/serving/model_server/api/predict.py).

A request with one 4 MiB query string is refused by each shard's server, but only after the
proxy has sent it to every shard, and each has read and parsed it. Checked here, at the same
limits as the servers' (`dpsr proxy` flags defaulting to `dpsr serve`'s), the request is refused
with the message the server would give, and no shard sees it. Behind the native front end a
gRPC request with such a string does not even reach this check: the front end refuses it by the
same rules before the proxy reads it (front_end_cc/string_limit.h). This check is what refuses
it behind the Python front end, and what applies the element limit.

The checks read only what is cheap to read: each input's declared shape, and the length of
each string. A string read out of the parsed message is a copy, and a copy of megabytes faults
fresh pages in on the event loop, so the strings of a large request are measured where they lie
in the bytes it came as (its wire fields, parsed as protocol buffers would: a later map entry
with the same key replaces an earlier one). Either way at most SCAN_MAX_FIELDS strings are read
per input (and as many other fields); an input with more is left to the servers, so a request
of a million short strings costs the proxy's event loop no per-string work.
"""
import dataclasses
from typing import Dict, List, Optional

from dpsr_tf.serving import tensors, wire

# `dpsr serve`'s defaults (--max_string_input_bytes, --max_input_elements).
DEFAULT_MAX_STRING_INPUT_BYTES = 4096
DEFAULT_MAX_INPUT_ELEMENTS = 1 << 20
# Strings (or wire fields) read per input at most: about a millisecond of the event loop.
SCAN_MAX_FIELDS = 4096
# Requests up to this size have their strings read from the parsed message (copies of at most
# this many bytes in all); larger ones from their wire bytes.
_COPY_MAX_BYTES = 64 << 10
_DT_STRING = 7  # tensorflow DataType DT_STRING
# PredictRequest.inputs, its map entries' key and value, TensorProto.string_val.
_INPUTS, _KEY, _VALUE, _STRING_VAL = 2, 1, 2, 8


@dataclasses.dataclass(frozen=True)
class ProxyRequestLimits:
    """The servers' input limits, as the proxy checks them (0: that check is off).

    Attributes:
      max_string_bytes: longest string element of any input, in bytes.
      max_elements: most values any one input may declare (its shape's product).
    """

    max_string_bytes: int = DEFAULT_MAX_STRING_INPUT_BYTES
    max_elements: int = DEFAULT_MAX_INPUT_ELEMENTS

    def __post_init__(self):
        for name in ("max_string_bytes", "max_elements"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: not checked), got "
                                 f"{getattr(self, name)}")


def _lengths_from_message(proto) -> Optional[List[int]]:
    strings = proto.string_val
    if len(strings) > SCAN_MAX_FIELDS:
        return None
    return [len(element) for element in strings]


def _lengths_from_wire(data) -> Dict[str, Optional[List[int]]]:
    """alias -> the byte lengths of its string_val elements, in order, read from the request's
    wire bytes without copying them (None for an input of more than SCAN_MAX_FIELDS strings or
    other fields; nothing at all for a request of more top-level fields than that)."""
    lengths: Dict[str, Optional[List[int]]] = {}
    for n, (number, wire_type, span) in enumerate(wire.fields(data)):
        if n >= SCAN_MAX_FIELDS:
            return {}
        if number != _INPUTS or wire_type != 2:
            continue
        key, found, others = "", [], 0
        for field, field_type, value in wire.fields(data, *span):
            if field == _KEY and field_type == 2:
                key = bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
            elif field == _VALUE and field_type == 2 and found is not None:
                # a value given twice is merged: its strings follow the first's
                for item, item_type, item_span in wire.fields(data, *value):
                    if item == _STRING_VAL and item_type == 2:
                        found.append(item_span[1] - item_span[0])
                    else:
                        others += 1
                    if len(found) > SCAN_MAX_FIELDS or others > SCAN_MAX_FIELDS:
                        found = None
                        break
        lengths[key] = found  # a later entry with this key replaces it, as parsing does
    return lengths


def check_predict_inputs(request, limits: ProxyRequestLimits, data=None) -> None:
    """Refuses `request` (a PredictRequest) when an input is over `limits`; `data`: the bytes it
    was parsed from (bytes or a memoryview; None: made in this process).

    Raises:
      ServingError(INVALID_ARGUMENT): an input declares more values than max_elements, or one
        of its strings is longer than max_string_bytes; the message names the input, the
        element, the limit and its flag, as the server's does.
    """
    if limits.max_elements:
        for alias, proto in request.inputs.items():
            tensors.check_num_elements(tuple(d.size for d in proto.tensor_shape.dim),
                                       limits.max_elements, f"input '{alias}'",
                                       tensors.MAX_ELEMENTS_HINT)
    if not limits.max_string_bytes or (data is not None
                                       and len(data) <= limits.max_string_bytes):
        return  # no string of a request this small can be over the limit
    from_wire = None
    if data is not None and len(data) > _COPY_MAX_BYTES:
        try:
            from_wire = _lengths_from_wire(data)
        except ValueError:  # bytes upb parsed yet this reader cannot: left to the servers
            return
    for alias, proto in request.inputs.items():
        if proto.dtype != _DT_STRING:
            continue
        lengths = _lengths_from_message(proto) if from_wire is None else from_wire.get(alias)
        for i, length in enumerate(lengths or ()):
            if length > limits.max_string_bytes:
                raise tensors.string_too_long(f"input '{alias}'", i, length,
                                              limits.max_string_bytes)
