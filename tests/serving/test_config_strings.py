"""Names, paths and labels of a ModelServerConfig with a NUL or another control character are
refused with INVALID_ARGUMENT naming the field and the model, both in a
HandleReloadConfigRequest (real client, real `dpsr serve`) and in --model_config_file, and the
server keeps serving what it served."""
import os
import subprocess
import sys

import grpc
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from dpsr_tf.demo import server_processes as process
from tests.serving import tfs_testdata
from tests.support.serving_testing import rpc_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name, base_path, labels=None):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path,
                                                model_platform="tensorflow")
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("config_strings")
    two = str(base / "two")
    tfs_testdata.half_plus_two_tf1(os.path.join(two, "1"))
    server = process.start_model_server(two, "two", name="config_strings")
    yield {"server": server, "two": two, "base": base}
    server.stop()


def _predict(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.address))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return list(stub.Predict(request, timeout=60).outputs["y"].float_val)


@pytest.mark.parametrize("case, fragments", [
    ("nul_in_base_path", ["model 'two'", "base_path", "'\\x00'", "position 6"]),
    ("newline_in_base_path", ["model 'two'", "base_path", "'\\n'"]),
    ("nul_in_name", ["model_config_list.config[0]", "name", "'\\x00'"]),
    ("nul_in_label", ["model 'two'", "version label", "\\x00"]),
])
def test_reload_config_with_control_characters_is_invalid_argument(env, case, fragments):
    two = env["two"]
    config = {
        "nul_in_base_path": lambda: _config("two", "/tmp/a\0b"),
        "newline_in_base_path": lambda: _config("two", two + "\nx"),
        "nul_in_name": lambda: _config("tw\0o", two),
        "nul_in_label": lambda: _config("two", two, {"sta\0ble": 1}),
    }[case]()
    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(env["server"].address))
    error = rpc_error(models.HandleReloadConfigRequest,
                      model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    assert _predict(env["server"]) == [3.0]  # still serving the model it served


def test_model_config_file_with_a_nul_in_base_path_is_refused_at_start(env):
    path = env["base"] / "nul.config"
    path.write_text(text_format.MessageToString(_config("two", env["two"] + "\0")))
    assert "\\000" in path.read_text() or "\\x00" in path.read_text()  # the escape, in the file
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "serve", "--port=0",
         f"--model_config_file={path}"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "model 'two': base_path" in output and "control character '\\x00'" in output, \
        output[-3000:]
    assert "Traceback" not in output
