"""REST predict bodies decoded value by value (rest_json.parse_predict_body): the document
equals json.loads for every body, a malformed one gets json.loads's own error, and an oversized
"instances" or "inputs" member is refused at the first row or value over the limit. Predict
answers are written from the output arrays (rest_json.predict_response_json)."""
import json

import grpc
import numpy as np
import pytest

from dpsr_tf.serving.model_server.api import rest_json
from dpsr_tf.serving.errors import ServingError

BODIES = [
    '{"instances": ["a", "b"]}',
    ' \n{ "signature_name" : "s" , "instances" : [ [1, 2.5], [3, -4e3] ] }\t',
    '{"instances": [{"query": "x", "k": 5}, {"query": "y", "k": 6}]}',
    '{"instances": [{"b64": "YWJj"}, "d"]}',
    '{"instances": []}',
    '{"inputs": {"query": ["a", "b"], "k": 5, "emb": [[1.0, 2.0]]}}',
    '{"inputs": ["a", "b", "c"]}',
    '{"inputs": 3}',
    '{"inputs": {}}',
    '{}',
    '{"instances": [1], "instances": [2, 3]}',  # duplicate key: the last wins, as json.loads
    '{"instances": ["\\u00e9\\ud83d\\ude00", "tab\\tquote\\""], "x": null, "y": true}',
    '[1, 2]',
    '"text"',
]
MALFORMED = ['{"instances": [1, 2,]}', '{"instances": [1 2]}', '{"instances": [1, 2]', '{"a" 1}',
             '{"instances": [1]} x', '{"instances": [01]}', '{"inputs": {"q": [1,]}}',
             '{"instances": ["\x01"]}', "{'a': 1}", "{", ""]


@pytest.mark.parametrize("text", BODIES)
def test_the_document_equals_json_loads(text):
    assert rest_json.parse_predict_body(text, max_rows=100, max_values=100) == json.loads(text)


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_body_gets_json_loads_error(text):
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        rest_json.parse_predict_body(text, max_rows=100, max_values=100)
    assert str(got.value) == str(want.value)


def test_seeded_random_documents_equal_json_loads():
    rng = np.random.default_rng(0)

    def value(depth):
        kind = rng.integers(0, 6 if depth < 3 else 4)
        if kind == 0:
            return float(rng.normal())
        if kind == 1:
            return int(rng.integers(-10**6, 10**6))
        if kind == 2:
            return "".join(chr(c) for c in rng.integers(32, 0x3000, rng.integers(0, 6)))
        if kind == 3:
            return [None, True, False][rng.integers(0, 3)]
        if kind == 4:
            return [value(depth + 1) for _ in range(rng.integers(0, 5))]
        return {f"k{j}": value(depth + 1) for j in range(rng.integers(0, 4))}

    for _ in range(300):
        doc = {"instances" if rng.integers(0, 2) else "inputs": value(0), "other": value(1)}
        text = json.dumps(doc, indent=int(rng.integers(0, 3)) or None, ensure_ascii=False)
        assert rest_json.parse_predict_body(text, 0, 0) == json.loads(text) == doc


def _refusal(text, **limits) -> str:
    with pytest.raises(ServingError) as e:
        rest_json.parse_predict_body(text, **limits)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.message


def test_rows_and_values_over_the_limits_are_refused():
    assert "more than 3 rows" in _refusal('{"instances": ["a","b","c","d"]}', max_rows=3)
    rest_json.parse_predict_body('{"instances": ["a","b","c"]}', max_rows=3)  # at the limit
    # Values count leaves: 2 rows of 3 values.
    message = _refusal('{"instances": [[1,2,3],[4,5,6]]}', max_rows=10, max_values=5)
    assert "\"instances\" has more than 5 values" in message and "--max_input_elements" in message
    message = _refusal('{"inputs": {"q": ["a"], "emb": [[1,2],[3,4]]}}', max_values=3)
    assert "input 'emb' has more than 3 values" in message
    # Columnar rows are not instances: only values are limited there.
    rest_json.parse_predict_body('{"inputs": {"q": ["a","b","c","d"]}}', max_rows=3)


def test_the_refusal_comes_before_the_rest_of_the_body_is_decoded():
    """A malformed tail after the first row over the limit is never reached (json.loads would
    have failed on it): the body was not decoded past that row."""
    text = '{"instances": ["a", "b", "c", ' + "!" * 1000
    assert "more than 2 rows" in _refusal(text, max_rows=2)


def _dpsr_outputs():
    return {"item_ids": np.array([[b"a", b"\xff\xfe"], [b"c", "d".encode()]], dtype=object),
            "scores": np.array([[0.5, 0.25], [1.0, -2.0]], np.float32),
            "heads": np.array([[0, 1], [1, 0]], np.int32)}


def test_predict_answers_are_written_from_the_output_arrays():
    """Columns and rows of a 2-row answer, as TF Serving writes them (hand-written); bytes
    that are not UTF-8 go as {"b64": ...} (ff fe: "//4=")."""
    ids = [["a", {"b64": "//4="}], ["c", "d"]]
    assert rest_json.predict_response_json(_dpsr_outputs(), row_format=False) == {
        "outputs": {"item_ids": ids, "scores": [[0.5, 0.25], [1.0, -2.0]],
                    "heads": [[0, 1], [1, 0]]}}
    assert rest_json.predict_response_json(_dpsr_outputs(), row_format=True) == {
        "predictions": [{"item_ids": ids[0], "scores": [0.5, 0.25], "heads": [0, 1]},
                        {"item_ids": ids[1], "scores": [1.0, -2.0], "heads": [1, 0]}]}


@pytest.mark.parametrize("row_format, key", [(False, "outputs"), (True, "predictions")])
def test_a_single_string_output_is_written_bare(row_format, key):
    one = {"item_ids": np.array([b"x", b"\xc3\xa9", b""], dtype=object)}
    assert rest_json.predict_response_json(one, row_format) == {key: ["x", "\u00e9", ""]}
