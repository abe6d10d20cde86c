"""The client retry policy's service config, against gRFC A6's fields written out by hand. That
gRPC honours it against a killed front end: tests/serving/test_front_end_process.py."""
import json

import pytest

from dpsr_tf.serving import client_retry


def test_the_service_config_retries_unavailable_on_read_only_methods_only():
    config = json.loads(client_retry.retry_service_config())
    assert config == {"methodConfig": [{
        "name": [{"service": "tensorflow.serving.PredictionService"},
                 {"service": "tensorflow.serving.ModelService", "method": "GetModelStatus"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1.0s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}


def test_channel_options_turn_retries_on_with_that_config():
    options = dict(client_retry.retry_channel_options(max_attempts=5))
    assert options["grpc.enable_retries"] == 1
    policy = json.loads(options["grpc.service_config"])["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"max_attempts": 1}, "max_attempts must be in [2, 5]"),
    ({"max_attempts": 6}, "gRPC caps it at 5"),
    ({"initial_backoff_s": 0}, "0 < initial_backoff_s"),
    ({"initial_backoff_s": 2.0, "max_backoff_s": 1.0}, "got 2.0 and 1.0"),
])
def test_out_of_range_settings_are_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        client_retry.retry_service_config(**kwargs)
