"""TF Serving's REST JSON: request bodies to requests, answers to JSON (the REST gateway's format).

  parse_body              a body's JSON document (strict UTF-8); a predict body decoded value by
                          value (parse_predict_body) and refused at the first row or value over
                          a limit
  build_predict_request   {"instances": [...]} (row) or {"inputs": {...}} (columnar) -> a
                          PredictRequest, each input checked against the limits, then converted
                          to a TensorProto of its signature dtype (json_to_tensor)
  fill_examples           {"examples": [...], "context": {...}?} -> tf.Examples (Classify, Regress)
  *_response_json         answers -> JSON (tensors by row or by column; results; status, metadata)

Strings are UTF-8 JSON strings or {"b64": "..."}; every error is INVALID_ARGUMENT naming the
value and the fix.

Why a predict body is decoded value by value: `json.loads` of a whole 16 MiB body of tiny values
makes millions of Python objects (a string or float object and a list slot each: ~64 bytes per
5-byte value) before any limit can be checked, and that peak (hundreds of MiB) is paid even when
the request is then refused for its rows. parse_predict_body walks the top-level object member by
member with the json module's own C scanner and decodes the arrays of "instances" and of each
"inputs" member one element at a time, counting rows (elements of the top-level array) and values
(leaves) as they come: the first row over --max_request_rows (in row format, every instance is a
row) or the first value over --max_input_elements in one input ends the parse, having held only
what came before it. Its result equals `json.loads` for every document; anything unusual (not an
object at the top, a syntax error anywhere) is handed to `json.loads` of the whole text, which
gives the result or the error message.
"""
import base64
import json
import re
import sys
from typing import Dict, Optional

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api.predict import RequestLimits, check_shape

_INT64_MAX = (1 << 63) - 1
# Deepest JSON nesting of a tensor value (numpy allows 32 dimensions).
_MAX_DEPTH = 32


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _show(value) -> str:
    """A JSON value for a message, cut to 80 characters."""
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:80]


# ----------------------------------------------------------------------------- body -> JSON

# A \uD800-\uDFFF escape: the body may hold a lone surrogate (checked by walking it).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_body(body: bytes, limits: Optional[RequestLimits] = None):
    """The JSON document of a request body; with `limits`, a predict body decoded value by
    value and refused as soon as it is over the row or value limit (parse_predict_body).

    Raises:
      ServingError(INVALID_ARGUMENT): empty, not UTF-8, not JSON, nested too deeply, an integer
        longer than Python converts (4300 digits), or a string with a lone UTF-16 surrogate
        escape such as "\\ud800" (not Unicode text: it could not be encoded again).
    """
    if not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        # Strict UTF-8 (json.loads(bytes) would also take UTF-16/32 and encoded surrogates).
        text = body.decode("utf-8")
        document = (json.loads(text) if limits is None else parse_predict_body(
            text, limits.max_rows, limits.max_elements))
        del text
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"JSON Parse error: Invalid value: {e}") from e
    except RecursionError as e:
        raise _bad("JSON Parse error: the request body nests JSON too deeply") from e
    except ValueError as e:  # int("<5,000 digits>"): over sys.get_int_max_str_digits()
        raise _bad(f"JSON Parse error: a number has more digits than the "
                   f"{sys.get_int_max_str_digits()} accepted; send it as a float or a "
                   "string") from e
    if _SURROGATE_ESCAPE.search(body):
        _check_unicode(document)
    return document


def _check_unicode(document) -> None:
    """INVALID_ARGUMENT if any string or key of a parsed document is not encodable as UTF-8."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _bad(f"JSON Parse error: The surrogate pair in string is invalid: "
                           f"{_show(value)} holds a lone UTF-16 surrogate escape "
                           f"(\\u{ord(value[e.start]):04x}); send valid Unicode text") from e


def signature_name(payload) -> str:
    """The optional "signature_name" of a request object; TF Serving's message if not a
    string (json_tensor.cc FormatSignatureError)."""
    name = payload.get("signature_name", "") if isinstance(payload, dict) else ""
    if not isinstance(name, str):
        raise _bad(f"JSON Value: {_show(payload)} not formatted correctly. 'signature_name' "
                   "key must be a string value.")
    return name


def signature_name_unparsed(body: bytes) -> Optional[str]:
    """The signature a body asks for, found without decoding it: "" (serving_default) when it
    cannot name one (no "signature_name" key, no \\u escape that could spell one); None when
    it may, and only decoding can tell."""
    if b'"signature_name"' in body or b"\\u" in body:
        return None
    return ""


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


# ----------------------------------------------------------------------------- JSON -> tensors

def _leaf_to_bytes(value, where):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise _bad(f"{where}: invalid base64 in {{\"b64\": ...}}: {e}") from e
    raise _bad(f"{where}: expected a string or {{\"b64\": \"...\"}}, got {json.dumps(value)[:80]}")


def _shape_of(value, where, depth=0):
    """Shape of a nested JSON list; INVALID_ARGUMENT when ragged or nested too deeply."""
    if not isinstance(value, list):
        return ()
    if depth >= _MAX_DEPTH:
        raise _bad(f"{where}: lists nested more than {_MAX_DEPTH} deep; a tensor has at most "
                   f"{_MAX_DEPTH} dimensions")
    if not value:
        return (0,)
    if not isinstance(value[0], list):  # a flat list: no per-element shapes to compare
        if any(isinstance(v, list) for v in value):
            raise _bad(f"{where}: nested lists of different lengths (ragged); every row of a "
                       "tensor needs the same shape")
        return (len(value),)
    inner = [_shape_of(v, where, depth + 1) for v in value]
    if any(s != inner[0] for s in inner):
        raise _bad(f"{where}: nested lists of different lengths (ragged); every row of a tensor "
                   "needs the same shape")
    return (len(value),) + inner[0]


def json_to_tensor(value, spec, where: str, limits: Optional[RequestLimits] = None):
    """A JSON value to a TensorProto of the signature input's dtype; with `limits`, its rows
    and values are checked against them before anything is converted."""
    shape = _shape_of(value, where)
    if limits is not None:
        check_shape(where, spec, shape, limits)
    if spec.dtype == types_pb2.DT_STRING:
        flat = np.array(value, dtype=object).ravel() if shape else [value]
        array = np.empty(len(flat), dtype=object)
        array[:] = [_leaf_to_bytes(v, where) for v in flat]
        array = array.reshape(shape)
    else:
        np_dtype = tensors.numpy_dtype(spec.dtype)
        if np_dtype is None:
            raise _bad(f"{where}: dtype {tensors.dtype_name(spec.dtype)} is not supported over REST")
        name = tensors.dtype_name(spec.dtype)
        leaves = np.array(value, dtype=object).ravel() if shape else [value]
        if np_dtype == np.bool_:
            if not all(isinstance(v, bool) for v in leaves):
                raise _bad(f"{where}: {name} needs true or false, got {_show(value)}")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves):
            # JSON true is not the number 1, nor "5" the number 5.
            raise _bad(f"{where}: value is not of expected type: "
                       f"{name.lower().removeprefix('dt_')} (expected numbers for {name}, got "
                       f"{_show(value)})")
        if np.issubdtype(np_dtype, np.integer):
            info = np.iinfo(np_dtype)
            for v in leaves:
                if isinstance(v, float) and (not np.isfinite(v) or v != np.floor(v)):
                    raise _bad(f"{where}: {name} needs integers, got {_show(v)}")
                if not info.min <= v <= info.max:
                    raise _bad(f"{where}: {_show(v)} is out of the range of {name} "
                               f"[{info.min}, {info.max}]")
            array = np.array([int(v) for v in leaves], dtype=np_dtype).reshape(shape)
        else:
            try:
                array = np.array(value, dtype=np_dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise _bad(f"{where}: expected numbers for {name}, got {_show(value)}") from e
    proto = tensors.from_ndarray(array)
    proto.dtype = spec.dtype
    return proto


def build_predict_request(body: dict, signature, model_spec,
                          limits: Optional[RequestLimits] = None) -> "predict_pb2.PredictRequest":
    """PredictRequest from a TF Serving REST predict body (row or columnar format); with
    `limits`, each input's rows and values are checked before it is converted."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object with \"instances\" or \"inputs\"")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise _bad("the request body must have exactly one of \"instances\" (row format) or "
                   "\"inputs\" (columnar format)")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(model_spec)
    request.model_spec.signature_name = signature.name
    required = [a for a, s in signature.inputs.items() if s.default is None]
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _bad("\"instances\" must be a non-empty list")
        if all(isinstance(i, dict) and not set(i) == {"b64"} for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise _bad("every instance must have the same named inputs")
            columns = {k: [i[k] for i in instances] for k in keys}
        else:
            if len(required) != 1:
                raise _bad(f"instances without names need a signature with exactly one "
                           f"required input; this one has {sorted(required)}: use objects")
            columns = {required[0]: instances}
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not set(inputs) == {"b64"}:
            columns = inputs
        else:
            if len(required) != 1:
                raise _bad(f"unnamed \"inputs\" need a signature with exactly one required "
                           f"input; this one has {sorted(required)}: use an object")
            columns = {required[0]: inputs}
    for alias, value in columns.items():
        spec = signature.inputs.get(alias)
        if spec is None:
            raise _bad(f"input '{alias}' is not in signature '{signature.name}'; inputs are "
                       f"{sorted(signature.inputs)}")
        request.inputs[alias].CopyFrom(json_to_tensor(value, spec, f"input '{alias}'", limits))
    return request


# ----------------------------------------------------------------------------- JSON -> tf.Examples

def _feature(value, where, feature) -> None:
    """A JSON feature value (number, string, {"b64"}, or a list of one kind) into a tf Feature:
    integers -> int64_list, other numbers -> float_list, strings -> bytes_list (TF Serving's
    REST classify/regress format)."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) for v in values) and values:
        raise _bad(f"{where}: true/false is not a feature value; send numbers or strings")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        for v in values:
            if not -(1 << 63) <= v <= _INT64_MAX:
                raise _bad(f"{where}: {v} is out of the int64 range")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    elif all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(_leaf_to_bytes(v, where) for v in values)
    else:
        raise _bad(f"{where}: a feature is a number, a string or a list of one kind; got "
                   f"{_show(value)}")


def _example(obj, where, example) -> None:
    if not isinstance(obj, dict):
        raise _bad(f"{where}: an example is a JSON object of features, got {_show(obj)}")
    for name, value in obj.items():
        _feature(value, f"{where} feature '{name}'", example.features.feature[name])


def fill_examples(payload: dict, input_proto, max_rows: int = 0) -> None:
    """TF Serving's REST {"examples": [...], "context": {...}?} into an Input proto; more
    than `max_rows` examples (0: no limit) are refused before any is built."""
    examples = payload.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _bad("\"examples\" must be a non-empty list of JSON objects")
    if max_rows and len(examples) > max_rows:
        raise _bad(f"Input has {len(examples)} examples; the limit is {max_rows} "
                   "(--max_request_rows); split it into smaller requests")
    if "context" in payload:
        target = input_proto.example_list_with_context
        _example(payload["context"], "context", target.context)
    else:
        target = input_proto.example_list
    for i, obj in enumerate(examples):
        _example(obj, f"examples[{i}]", target.examples.add())


# ----------------------------------------------------------------------------- answers -> JSON

def _text(v: bytes):
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(v).decode("ascii")}


def _jsonable(array: np.ndarray):
    if array.dtype != object or not array.size:
        return array.tolist()
    flat = array.ravel().tolist()
    try:  # one decode per element, in a loop of C calls; element by element only when needed
        texts = [v.decode("utf-8") for v in flat]
    except UnicodeDecodeError:
        texts = [_text(v) for v in flat]
    if array.ndim == 1:
        return texts
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out.reshape(array.shape).tolist()


def predict_response_json(outputs: Dict[str, np.ndarray], row_format: bool) -> dict:
    """A Predict answer's outputs ({alias: array}, in answer order) as TF Serving's REST
    answer: "predictions" by row (row_format, the answer to "instances") or "outputs" by
    column."""
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {a: _jsonable(v) for a, v in outputs.items()}}
    rows = {v.shape[0] if v.ndim else -1 for v in outputs.values()}
    if len(rows) != 1 or -1 in rows:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "outputs do not share a batch dimension; use the columnar format "
                           "(\"inputs\") for this signature")
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    columns = {a: _jsonable(v) for a, v in outputs.items()}
    n = rows.pop()
    return {"predictions": [{a: columns[a][i] for a in columns} for i in range(n)]}


def classify_response_json(response) -> dict:
    """A ClassificationResponse as TF Serving's REST answer: per example, [label, score] pairs."""
    return {"results": [[[c.label, c.score] for c in row.classes]
                        for row in response.result.classifications]}


def regress_response_json(response) -> dict:
    """A RegressionResponse as TF Serving's REST answer: one value per example."""
    return {"results": [r.value for r in response.result.regressions]}


def _proto_json(message) -> dict:
    # As TF Serving prints it: every field, default values included.
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


def model_status_json(response) -> dict:
    """A GetModelStatusResponse as TF Serving's REST answer."""
    return _proto_json(response)


def model_metadata_json(response) -> dict:
    """A GetModelMetadataResponse as TF Serving's REST answer (the SignatureDefMap unpacked)."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    return {"model_spec": _proto_json(response.model_spec),
            "metadata": {"signature_def": _proto_json(sig_map)}}
