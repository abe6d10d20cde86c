"""Versions end to end: a new version swapped in under concurrent load with zero failed
requests, a broken version that shows in GetModelStatus and never replaces the healthy one,
version labels and rollback, and config reloads (HandleReloadConfigRequest and file polling)."""
import os
import shutil
import tempfile

import grpc
import pytest
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc)

from dpsr_tf.demo import server_processes as process
from tests.support import toy_servable as ts
from tests.support import waiting
from tests.support.load import PredictLoad
from tests.support.serving_testing import outputs, predict_request, rpc_error

State = get_model_status_pb2.ModelVersionStatus.State


def _write_version(base, version, spec, num_items=60):
    """Version `version` of a model, its item ids prefixed "v<version>-" (atomic rename)."""
    ids, emb = ts.make_items(num_items, spec.dim, seed=version, prefix=f"v{version}-")
    ts.write_toy_servable(os.path.join(base, str(version)), ids, emb, spec)


def _config(root, labeled_versions=(1, 2), labels=None, extra=""):
    labels = {"stable": 1, "canary": 2} if labels is None else labels
    specific = " ".join(f"versions: {v}" for v in labeled_versions)
    label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
    return f"""
model_config_list {{
  config {{ name: "dpsr" base_path: "{root}/dpsr" model_platform: "tensorflow" }}
  config {{ name: "labeled" base_path: "{root}/labeled" model_platform: "tensorflow"
           model_version_policy {{ specific {{ {specific} }} }} {label_text} }}
  {extra}
}}"""


def _wait_for(condition, what="condition"):
    return waiting.wait_until(condition, what)


@pytest.fixture(scope="module")
def env(tmp_path_factory, spec):
    root = str(tmp_path_factory.mktemp("versions"))
    _write_version(os.path.join(root, "dpsr"), 1, spec)
    for v in (1, 2):
        _write_version(os.path.join(root, "labeled"), v, spec)
    config_file = os.path.join(root, "models.config")
    with open(config_file, "w") as f:
        f.write(_config(root))
    server = process.start_model_server(
        model_config_file=config_file, log_dir=root, flags=[
            "--enable_batching", "--file_system_poll_wait_seconds=0.2",
            "--max_num_load_retries=0", f"--model_base_path_root={root}",
            "--model_config_file_poll_wait_seconds=0.3"])
    channel = grpc.insecure_channel(server.address)
    env = {"root": root, "server": server, "config_file": config_file,
           "predict": process.prediction_stub(server.address),
           "models": model_service_pb2_grpc.ModelServiceStub(channel)}
    yield env
    channel.close()
    assert server.stop() == 0, server.log_tail()


def _status(env, name, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return {s.version: s for s in
            env["models"].GetModelStatus(request, timeout=30).model_version_status}


def _served_version(response):
    """(version that answered, {item id prefix}): each version's items have their own prefix."""
    return (response.model_spec.version.value,
            {item.split(b"-")[0] for item in outputs(response)["item_ids"][0]})


def _hammer(stub, threads=4):
    """Client threads sending Predict("dpsr", latest) until the block ends."""
    return PredictLoad(stub, lambda thread, n: predict_request("dpsr", [f"query {thread} {n}"],
                                                                k=5),
                       threads=threads, timeout_s=30, summary=_served_version)


def test_new_version_swaps_in_under_load_without_failures(env, spec):
    base = os.path.join(env["root"], "dpsr")
    with _hammer(env["predict"]) as hammer:
        _wait_for(lambda: hammer.count("OK") > 20, what="traffic on version 1")
        _write_version(base, 2, spec)  # appears atomically (temp dir + rename)
        _wait_for(lambda: any(v == 2 for v, _ in hammer.summaries()[-5:]),
                  what="version 2 serving")
        shutil.rmtree(os.path.join(base, "1"))
        _wait_for(lambda: _status(env, "dpsr")[1].state == State.END, what="v1 unloaded")
        seen = hammer.count("OK")
        _wait_for(lambda: hammer.count("OK") > seen + 20, what="traffic after the swap")
    assert hammer.errors() == []
    answers = hammer.summaries()
    assert {v for v, _ in answers} == {1, 2}
    assert all(prefixes == {f"v{v}".encode()} for v, prefixes in answers)  # no mixed answers
    status = _status(env, "dpsr")
    assert status[2].state == State.AVAILABLE and status[1].status.error_code == 0


def test_broken_version_shows_in_status_and_never_replaces_the_healthy_one(env):
    base = os.path.join(env["root"], "dpsr")
    # The healthy version is whatever the module's earlier tests left (2 after the swap test,
    # 1 when this test runs alone); the broken one comes next.
    healthy = max(int(name) for name in os.listdir(base) if name.isdigit())
    broken_version = healthy + 1
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
    shutil.copytree(os.path.join(base, str(healthy)), os.path.join(tmp, str(broken_version)))
    with open(os.path.join(tmp, str(broken_version), "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel protobuf")
    with _hammer(env["predict"], threads=2) as hammer:
        os.rename(os.path.join(tmp, str(broken_version)), os.path.join(base, str(broken_version)))

        def failed():
            status = _status(env, "dpsr").get(broken_version)
            return status if status is not None and status.state == State.END else None
        broken = _wait_for(failed, what="broken version load failure")
        seen = hammer.count("OK")
        _wait_for(lambda: hammer.count("OK") > seen + 20, what="traffic after the failure")
    shutil.rmtree(tmp)
    assert broken.status.error_code != 0 and "SavedModel" in broken.status.error_message
    assert hammer.errors() == [] and {v for v, _ in hammer.summaries()} == {healthy}
    assert _status(env, "dpsr")[healthy].state == State.AVAILABLE
    assert _status(env, "dpsr", version=broken_version)[broken_version].state == State.END
    shutil.rmtree(os.path.join(base, str(broken_version)))


def _reload(env, text):
    request = model_management_pb2.ReloadConfigRequest()
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
    text_format.Parse(text, request.config)
    return env["models"].HandleReloadConfigRequest(request, timeout=120)


def test_labels_and_rollback(env):
    def version_of(**spec):
        return env["predict"].Predict(predict_request("labeled", ["q"], k=3, **spec),
                                      timeout=30).model_spec.version.value

    assert version_of(label="stable") == 1 and version_of(label="canary") == 2
    assert version_of() == 2 and version_of(version=1) == 1
    error = rpc_error(env["predict"].Predict, predict_request("labeled", ["q"], label="beta"))
    # TF Serving's code and message for an unknown label (server_core.cc).
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: beta"
    # Roll back: serve version 1 only.
    _reload(env, _config(env["root"], labeled_versions=(1,), labels={"stable": 1}))
    assert version_of() == 1 and version_of(label="stable") == 1
    assert rpc_error(env["predict"].Predict, predict_request("labeled", ["q"], label="canary")
                     ).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(env, "labeled")[2].state == State.END
    # A label on a version that is not loaded is refused; the server keeps serving.
    error = rpc_error(_reload, env, _config(env["root"], labeled_versions=(1,),
                                            labels={"stable": 1, "next": 5}))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "next" in error.details()
    assert version_of(label="stable") == 1


def test_reload_config_adds_removes_and_confines_models(env):
    extra = f'config {{ name: "extra" base_path: "{env["root"]}/labeled" }}'
    _reload(env, _config(env["root"], labeled_versions=(1,), labels={}, extra=extra))
    response = env["predict"].Predict(predict_request("extra", ["q"], k=2), timeout=30)
    assert response.model_spec.name == "extra" and response.model_spec.version.value == 2
    _reload(env, _config(env["root"], labeled_versions=(1,), labels={}))
    assert rpc_error(env["predict"].Predict, predict_request("extra", ["q"])
                     ).code() == grpc.StatusCode.NOT_FOUND
    outside = 'config { name: "etc" base_path: "/etc" }'
    error = rpc_error(_reload, env, _config(env["root"], extra=outside))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = 'config { name: "x" base_path: "/m" model_platform: "pytorch" }'
    assert rpc_error(_reload, env, _config(env["root"], extra=bad)
                     ).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env["predict"].Predict(predict_request("dpsr", ["q"], k=2), timeout=30)


def test_model_config_file_is_polled(env):
    extra = f'config {{ name: "polled" base_path: "{env["root"]}/dpsr" }}'
    with open(env["config_file"], "w") as f:
        f.write(_config(env["root"], extra=extra))

    def polled_serves():
        try:
            return env["predict"].Predict(predict_request("polled", ["q"], k=2), timeout=30)
        except grpc.RpcError:
            return None

    response = _wait_for(polled_serves, what="the polled config to apply")
    assert response.model_spec.version.value == 2
    # The file's labels apply again (stable -> 1, canary -> 2).
    _wait_for(lambda: 2 in _status(env, "labeled") and
              _status(env, "labeled")[2].state == State.AVAILABLE, what="labeled v2 reloaded")
    assert env["predict"].Predict(predict_request("labeled", ["q"], label="canary"),
                                  timeout=30).model_spec.version.value == 2
