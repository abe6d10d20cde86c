"""A REST predict body parsed value by value, so that an oversized one is refused early.

`json.loads` of a whole 16 MiB body of tiny values makes millions of Python objects (a string
or float object and a list slot each: ~64 bytes per 5-byte value) before any limit can be
checked, and that peak (hundreds of MiB) is paid even when the request is then refused for
its rows. Here the top-level object is walked member by member with the json module's own C
scanner, and the arrays of "instances" and of each "inputs" member are decoded one element at
a time, counting rows (elements of the top-level array) and values (leaves) as they come: the
first row over --max_request_rows (in row format, every instance is a row) or the first value
over --max_input_elements in one input ends the parse with INVALID_ARGUMENT, having held only
what came before it.

The result equals `json.loads` for every document. Anything unusual (not an object at the top,
a syntax error anywhere) is handed to `json.loads` of the whole text, which gives the result
or the error message exactly as before.
"""
import json
import re

import grpc

from dpsr_tf.serving.errors import ServingError

_WS = re.compile(r"[ \t\n\r]*")
_SCAN = json.JSONDecoder().scan_once  # the C scanner: (value, end) at an index, or StopIteration


class _Fallback(Exception):
    """Anything the walk does not handle: json.loads of the whole text decides."""


def _ws(s: str, i: int) -> int:
    return _WS.match(s, i).end()


def _value(s: str, i: int):
    try:
        return _SCAN(s, i)
    except (StopIteration, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise _Fallback() from e


def _leaves(value) -> int:
    """Scalar values in a JSON value (a {"b64": ...} object counts as one)."""
    if not isinstance(value, list):
        return 1
    count, stack = 0, [value]
    while stack:
        for v in stack.pop():
            if isinstance(v, list):
                stack.append(v)
            else:
                count += 1
    return count


class _Counted:
    """Counts the rows and values of one input while its array is decoded."""

    def __init__(self, where: str, max_rows: int, max_values: int):
        self.where, self.max_rows, self.max_values = where, max_rows, max_values
        self.values = 0

    def add(self, rows: int, element) -> None:
        if self.max_rows and rows > self.max_rows:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request has more than {self.max_rows} rows ({self.where}); the limit is "
                f"{self.max_rows} (--max_request_rows); split it into smaller requests")
        self.values += _leaves(element)
        if self.max_values and self.values > self.max_values:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{self.where} has more than {self.max_values:,} values; the limit is "
                f"{self.max_values:,} (--max_input_elements); send fewer values or split the "
                "request")


def _array(s: str, i: int, counted: _Counted):
    """Decodes the array at s[i] == "[" element by element; returns (list, end)."""
    out = []
    i = _ws(s, i + 1)
    if s.startswith("]", i):
        return out, i + 1
    while True:
        element, i = _value(s, i)
        out.append(element)
        counted.add(len(out), element)
        i = _ws(s, i)
        if s.startswith(",", i):
            i = _ws(s, i + 1)
        elif s.startswith("]", i):
            return out, i + 1
        else:
            raise _Fallback()


def _members(s: str, i: int, on_member):
    """Walks the object at s[i] == "{"; `on_member(key, i)` returns (value, end)."""
    out = {}
    i = _ws(s, i + 1)
    if s.startswith("}", i):
        return out, i + 1
    while True:
        if not s.startswith('"', i):
            raise _Fallback()
        key, i = _value(s, i)
        i = _ws(s, i)
        if not s.startswith(":", i):
            raise _Fallback()
        out[key], i = on_member(key, _ws(s, i + 1))
        i = _ws(s, i)
        if s.startswith(",", i):
            i = _ws(s, i + 1)
        elif s.startswith("}", i):
            return out, i + 1
        else:
            raise _Fallback()


def parse_predict_body(text: str, max_rows: int = 0, max_values: int = 0):
    """The JSON document of a predict body, `json.loads(text)`, refused early when too large.

    Args:
      text: the body, decoded.
      max_rows: most instances in row format (0: no limit).
      max_values: most values of one input, "instances" or an "inputs" member (0: no limit).

    Raises:
      ServingError(INVALID_ARGUMENT): over a limit (the rest of the body is not decoded).
      json.JSONDecodeError, ValueError, RecursionError: as json.loads for a malformed body.
    """
    def top(key, i):
        if key == "instances" and s.startswith("[", i):
            return _array(s, i, _Counted('"instances"', max_rows, max_values))
        if key == "inputs" and s.startswith("{", i):
            return _members(s, i, inputs_member)
        if key == "inputs" and s.startswith("[", i):
            return _array(s, i, _Counted('"inputs"', 0, max_values))
        return _value(s, i)

    def inputs_member(key, i):
        if s.startswith("[", i):
            return _array(s, i, _Counted(f"input '{key[:100]}'", 0, max_values))
        return _value(s, i)

    s = text
    try:
        start = _ws(s, 0)
        if not s.startswith("{", start):
            raise _Fallback()
        document, end = _members(s, start, top)
        if _ws(s, end) != len(s):
            raise _Fallback()
        return document
    except _Fallback:
        return json.loads(s)
