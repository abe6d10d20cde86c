"""TF Serving's version-label, reload and start-up expectations, ported case by case.

Origins in tensorflow/serving (tensorflow_serving/model_servers/...):
  [server_core]  server_core_test.cc (labels, reload)
  [server_test]  tensorflow_model_server_test.py (config reload, bad config, flags)
  [predict_util] predict_util_test.cc (the method-name check when enabled)
Three `dpsr serve` processes start together: A with default flags (and every
tensorflow_model_server flag that has nothing to do here given, to prove they are accepted),
B with --allow_version_labels_for_unavailable_models, --enable_signature_method_name_check and
a config file polled every second, and a third that must refuse a bad config file.
"""
import os
import subprocess
import sys
import time

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from dpsr_tf.demo import server_processes as process
from tests.support import waiting
from tests.support.serving_testing import fill_model_spec, rpc_error
from tests.serving import tfs_testdata

RPC_TIMEOUT = 60.0
BOGUS_VERSION = 777
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# tensorflow_model_server flags that do not change this server's answers; A gets them all.
ACCEPTED_FLAGS = [
    "--rest_api_num_threads=4", "--rest_api_enable_cors_support=false", "--num_load_threads=2",
    "--num_unload_threads=2", "--flush_filesystem_caches=true",
    "--tensorflow_session_parallelism=1", "--tensorflow_intra_op_parallelism=1",
    "--tensorflow_inter_op_parallelism=1", "--saved_model_tags=serve",
    "--enable_model_warmup=true", "--num_request_iterations_for_warmup=2",
    "--max_num_load_retries=1", "--load_retry_interval_micros=100000",
    "--grpc_max_threads=4", "--remove_unused_fields_from_bundle_metagraph=true",
    "--enable_grpc_healthcheck_service=true", "--enable_serialization_as_tensor_content=false",
    "--per_process_gpu_memory_fraction=0.5", "--xla_cpu_compilation_enabled=false",
    "--xla_gpu_compilation_enabled=true",
    "--prefer_tflite_model=false", "--num_tflite_pools=1", "--num_tflite_interpreters_per_pool=1",
    "--skip_initialize_tpu=true", "--use_alts_credentials=false", "--enable_profiler=true",
    "--mixed_precision=", "--enable_per_model_batching_parameters=false",
    "--rest_api_timeout_in_ms=5000",
]


def _config(models) -> model_server_config_pb2.ModelServerConfig:
    """models: (name, base_path, labels dict) -> ModelServerConfig (policy: all versions)."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base, labels in models:
        c = config.model_config_list.config.add(name=name, base_path=base,
                                                model_platform="tensorflow")
        c.model_version_policy.all.SetInParent()
        for label, version in labels.items():
            c.version_labels[label] = version
    return config


def _config_text(models) -> str:
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
    return text_format.MessageToString(_config(models))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfs_core")
    two = str(base / "two")
    tfs_testdata.half_plus_two_tf1(os.path.join(two, "123"))
    tfs_testdata.half_plus_two_tf1(os.path.join(two, "124"), b=3.0)
    hp3 = str(base / "hp3")
    tfs_testdata.half_plus_two_tf1(os.path.join(hp3, "1"), b=3.0)
    other = str(base / "other")
    tfs_testdata.half_plus_two_tf1(os.path.join(other, "5"))
    tf2 = str(base / "tf2")
    tfs_testdata.half_plus_two_tf2(os.path.join(tf2, "1"))
    file_a = base / "a.config"
    file_a.write_text(_config_text([("two", two, {})]))
    file_b = base / "b.config"
    file_b.write_text(_config_text([("two", two, {}), ("tf2", tf2, {})]))
    bad = base / "bad.config"
    bad.write_text("model_config_list { config { name: 'x' base_path: '/tmp' oops } }\n")
    env_vars = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    bad_proc = subprocess.Popen(
        [sys.executable, "-m", "dpsr_tf.cli", "serve", "--port=0", f"--model_config_file={bad}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env_vars, cwd=ROOT)
    a = process.model_server_process(
        model_config_file=str(file_a), name="tfs_core_a",
        flags=ACCEPTED_FLAGS + ["--model_config_file_poll_wait_seconds=0",
                                "--file_system_poll_wait_seconds=0"])
    b = process.model_server_process(
        model_config_file=str(file_b), name="tfs_core_b",
        flags=["--allow_version_labels_for_unavailable_models",
               "--enable_signature_method_name_check",
               "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=0"])
    process.start_all([a, b])
    bad_out, _ = bad_proc.communicate(timeout=waiting.SUBPROCESS_TIMEOUT_S)
    yield {"a": a, "b": b, "two": two, "hp3": hp3, "other": other, "tf2": tf2,
           "file_a": file_a, "file_b": file_b, "bad": (bad_proc.returncode, bad_out.decode())}
    a.stop()
    b.stop()


def _stubs(server):
    channel = grpc.insecure_channel(server.address)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def _reload(server, models):
    _, model_stub = _stubs(server)
    request = model_management_pb2.ReloadConfigRequest(config=_config(models))
    return model_stub.HandleReloadConfigRequest(request, RPC_TIMEOUT)


def _predict(server, name, version=None, label=None, signature=""):
    """(version that answered, y for x = 2)."""
    stub, _ = _stubs(server)
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, name, version, label, signature)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    result = stub.Predict(request, RPC_TIMEOUT)
    return result.model_spec.version.value, list(result.outputs["y"].float_val)


# ============================================================================ [server_core]

def test_model_spec_multiple_versions_available(env):
    """[server_core] ModelSpecMultipleVersionsAvailable: latest, a specific version, labels A
    and B after a reload, and an unknown label."""
    a = env["a"]
    assert _predict(a, "two") == (124, [4.0])          # latest: 0.5 * 2 + 3
    assert _predict(a, "two", version=123) == (123, [3.0])
    _reload(a, [("two", env["two"], {"A": 123, "B": 124})])
    assert _predict(a, "two", label="A") == (123, [3.0])
    assert _predict(a, "two", label="B") == (124, [4.0])
    error = rpc_error(_predict, a, "two", label="nonexistent label")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: nonexistent label"


def test_assign_label_to_unavailable_version(env):
    """[server_core] AssignLabelToUnavailableVersion: refused without the flag."""
    error = rpc_error(_reload, env["a"], [("two", env["two"],
                                           {"A": 123, "B": 124, "nice try": BOGUS_VERSION})])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not currently available for inference" in error.details()
    assert _predict(env["a"], "two", label="A") == (123, [3.0])   # the old labels stand


def test_assign_label_to_unavailable_version_allowed(env):
    """[server_core] AssignLabelToUnavailableVersionAllowed: a new label may point to a
    version that is not loaded with --allow_version_labels_for_unavailable_models."""
    _reload(env["b"], [("two", env["two"], {"nice try": BOGUS_VERSION}),
                       ("tf2", env["tf2"], {})])
    # It serves nothing until that version loads.
    assert rpc_error(_predict, env["b"], "two", label="nice try").code() == \
        grpc.StatusCode.NOT_FOUND


def test_assign_existing_label_to_unavailable_version(env):
    """[server_core] AssignExistingLabelToUnavailableVersion: even with the flag, a label that
    exists never moves to a version that is not available (so it never stops serving)."""
    b = env["b"]
    _reload(b, [("two", env["two"], {"A": 123, "B": 124}), ("tf2", env["tf2"], {})])
    error = rpc_error(_reload, b, [("two", env["two"], {"A": BOGUS_VERSION, "B": 124}),
                                   ("tf2", env["tf2"], {})])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not currently available for inference" in error.details()
    assert _predict(b, "two", label="A") == (123, [3.0])


def test_reload_config_waits_till_models_available(env):
    """[server_core] ReloadConfigWaitsTillModelsAvailable: once the reload returns, the new
    model serves."""
    _reload(env["a"], [("two", env["two"], {}), ("hp3", env["hp3"], {})])
    assert _predict(env["a"], "hp3") == (1, [4.0])


def test_reload_config_change_model_base_path(env):
    """[server_core] ReloadConfigChangeModelBasePath: the versions of the new path serve."""
    _reload(env["a"], [("two", env["two"], {}), ("hp3", env["other"], {})])
    assert _predict(env["a"], "hp3") == (5, [3.0])


def test_reload_config_unloads_models(env):
    """[server_core] ReloadConfigUnloadsModels: a model left out of the config is unloaded."""
    _reload(env["a"], [("two", env["two"], {})])
    assert rpc_error(_predict, env["a"], "hp3").code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_handles_loading_a_previously_unloaded_model(env):
    """[server_core] ReloadConfigHandlesLoadingAPreviouslyUnloadedModel."""
    _reload(env["a"], [("two", env["two"], {}), ("hp3", env["hp3"], {})])
    assert _predict(env["a"], "hp3") == (1, [4.0])
    _, model_stub = _stubs(env["a"])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "hp3"
    states = {s.version: s.state for s in
              model_stub.GetModelStatus(request, RPC_TIMEOUT).model_version_status}
    assert states[1] == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _refused(server, config):
    _, model_stub = _stubs(server)
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return rpc_error(model_stub.HandleReloadConfigRequest, request, timeout=RPC_TIMEOUT)


def test_refused_configs_change_nothing(env):
    """[server_core] DuplicateModelNameInConfig, UnknownModelPlatform, RelativePathFails,
    IllegalReconfigurationToCustomConfig: each config is refused (INVALID_ARGUMENT) and the
    server keeps serving what it served."""
    a = env["a"]
    duplicate = _config([("two", env["two"], {}), ("two", env["hp3"], {})])
    unknown_platform = _config([("two", env["two"], {})])
    unknown_platform.model_config_list.config[0].model_platform = "not_a_known_platform"
    relative = _config([("two", os.path.relpath(env["two"]), {})])
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.SetInParent()
    for config, fragment in ((duplicate, "appears twice"),
                             (unknown_platform, "not_a_known_platform"),
                             (relative, "absolute path or URI"),
                             (custom, "custom_model_config")):
        error = _refused(a, config)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert fragment in error.details()
    assert _predict(a, "two", version=123) == (123, [3.0])


# ============================================================================ [predict_util]

def test_signature_method_name_check_enabled(env):
    """[predict_util] PredictionSignatureMethodNameCheck with the check on: Predict on a
    signature whose method is not predict/classify/regress is refused (INTERNAL, as TF
    Serving), and Classify on a TF2 signature (method `predict`) is refused."""
    b = env["b"]
    _reload(b, [("two", env["two"], {}), ("tf2", env["tf2"], {})])
    error = rpc_error(_predict, b, "two", signature="odd_method")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "Expected prediction signature method_name" in error.details()
    stub, _ = _stubs(b)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tf2"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    error = rpc_error(stub.Classify, request, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name" in error.details()
    # Server A (check off, the default) runs the same signature.
    assert _predict(env["a"], "two", version=123, signature="odd_method") == (123, [3.0])


# ============================================================================ [server_test]

def test_bad_model_config(env):
    """[server_test] testBadModelConfig: the server refuses to start on a config file that
    does not parse, saying why."""
    code, output = env["bad"]
    assert code != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in output


def test_accepted_flags_and_notices(env):
    """[server_test] the harness's flags: every tensorflow_model_server flag given to A was
    accepted (A serves), and those that cannot apply got one startup line each."""
    assert _predict(env["a"], "two", version=123) == (123, [3.0])
    log = env["a"].log_tail(400)
    assert "--per_process_gpu_memory_fraction=0.5 is accepted but not applied" in log
    assert "--skip_initialize_tpu=True is accepted but not applied" in log
    assert "--xla_gpu_compilation_enabled=True is accepted but not applied" in log
    assert "--num_tflite_interpreters_per_pool=1 is accepted but not applied" in log
    assert "--prefer_tflite_model=False is accepted" not in log  # applied: TFLite is served


def test_model_config_reload_with_zero_poll_period(env):
    """[server_test] testModelConfigReloadWithZeroPollPeriod: with
    --model_config_file_poll_wait_seconds=0 an edited file is not re-read."""
    env["file_a"].write_text(_config_text([("two", env["two"], {}),
                                           ("late", env["hp3"], {})]))
    time.sleep(2.5)
    assert rpc_error(_predict, env["a"], "late").code() == grpc.StatusCode.NOT_FOUND


def test_model_config_reload(env):
    """[server_test] testModelConfigReload: with a poll period, an edited config file is
    applied (the model "two" now serves half_plus_three's directory)."""
    env["file_b"].write_text(_config_text([("two", env["hp3"], {})]))

    def applied():
        try:
            return _predict(env["b"], "two") == (1, [4.0])
        except grpc.RpcError:
            return False
    waiting.wait_until(applied, "the edited config file to apply", poll_s=0.5)


def test_version_flag():
    """[server_test] --version prints the version and exits 0."""
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "serve", "--version"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TensorFlow ModelServer" in proc.stdout and "TensorFlow Library" in proc.stdout
