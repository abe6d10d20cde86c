"""Config files in TF Serving's text-proto formats: parsing, errors with file:line, checks."""
import grpc
import pytest
from tensorflow_serving.config import file_system_storage_path_source_pb2 as fs_pb2

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.errors import ServingError

MODELS_CONFIG = """
model_config_list {
  config {
    name: "dpsr"
    base_path: "/models/dpsr"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "other" base_path: "/models/other" }
}
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_model_server_config_parses_tf_serving_format(tmp_path):
    cfg = config_lib.read_text_proto(_write(tmp_path, "models.config", MODELS_CONFIG),
                                     config_lib.ModelServerConfig, "--model_config_file")
    config_lib.validate_model_server_config(cfg)
    models = cfg.model_config_list.config
    assert [m.name for m in models] == ["dpsr", "other"]
    assert list(models[0].model_version_policy.specific.versions) == [1, 2]
    assert dict(models[0].version_labels) == {"stable": 1, "canary": 2}


def test_parse_error_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, "bad.config", "model_config_list {\n  config {\n    nme: 'x'\n")
    with pytest.raises(ServingError) as e:
        config_lib.read_text_proto(path, config_lib.ModelServerConfig, "--model_config_file")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{path}:3:" in e.value.message and "nme" in e.value.message


@pytest.mark.parametrize("text, fragment", [
    ('model_config_list { config { base_path: "/m" } }', "name is empty"),
    ('model_config_list { config { name: "a" } }', "base_path is empty"),
    ('model_config_list { config { name: "a" base_path: "/m" } '
     'config { name: "a" base_path: "/n" } }', "appears twice"),
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "pytorch" } }',
     "not supported"),
    ('model_config_list { config { name: "a" base_path: "/m" '
     'model_version_policy { specific { } } } }', "lists no versions"),
    ('model_config_list { config { name: "a" base_path: "/m" '
     'version_labels { key: "a/b" value: 1 } } }', "version label"),  # "/": not in a REST path
])
def test_invalid_model_configs_are_rejected(text, fragment):
    cfg = config_lib.parse_text_proto(text, config_lib.ModelServerConfig, "test")
    with pytest.raises(ServingError) as e:
        config_lib.validate_model_server_config(cfg)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in e.value.message


def test_base_path_outside_root_is_permission_denied(tmp_path):
    cfg = config_lib.single_model_config("dpsr", "/etc")
    with pytest.raises(ServingError) as e:
        config_lib.validate_model_server_config(cfg, base_path_root=str(tmp_path))
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    inside = config_lib.single_model_config("dpsr", str(tmp_path / "models" / "dpsr"))
    config_lib.validate_model_server_config(inside, base_path_root=str(tmp_path))


@pytest.mark.parametrize("policy_text, on_disk, expected", [
    ("", [1, 3, 2], (3,)),
    ("latest { num_versions: 2 }", [1, 3, 2], (2, 3)),
    ("latest { num_versions: 5 }", [4], (4,)),
    ("all { }", [5, 1, 3], (1, 3, 5)),
    ("specific { versions: 1 versions: 7 }", [1, 2, 3], (1,)),
    ("", [], ()),
])
def test_version_policies(policy_text, on_disk, expected):
    policy = config_lib.parse_text_proto(
        policy_text, fs_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy, "test")
    assert config_lib.aspired_versions(policy, on_disk) == expected


def test_batching_parameters_file(tmp_path):
    path = _write(tmp_path, "batching.config", """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
    """)
    opts = config_lib.read_batching_options(path)
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches,
            opts.num_batch_threads, opts.allowed_batch_sizes) == (32, 2000, 100, 2, (8, 32))


@pytest.mark.parametrize("text, fragment", [
    ("max_batch_size { value: 0 }", "max_batch_size is 0"),
    ("max_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 12",
     "must equal max_batch_size"),
    ("max_batch_size { value: 16 } allowed_batch_sizes: 16 allowed_batch_sizes: 8",
     "increasing"),
    ("batch_timeout_micros { value: -5 }", "batch_timeout_micros"),
])
def test_bad_batching_parameters(tmp_path, text, fragment):
    with pytest.raises(ServingError) as e:
        config_lib.read_batching_options(_write(tmp_path, "b.config", text))
    assert fragment in e.value.message and "b.config" in e.value.message


def test_monitoring_and_ssl_files(tmp_path):
    mon = config_lib.read_monitoring_options(_write(
        tmp_path, "m.config", 'prometheus_config { enable: true, path: "/metrics" }'))
    assert mon == config_lib.MonitoringOptions(True, "/metrics")
    # The PEM is loaded when the file is read (real certificates: test_tls_and_lockdown.py).
    with pytest.raises(ServingError, match="not a PEM certificate and its matching private"):
        config_lib.read_ssl_options(_write(
            tmp_path, "s.config", 'server_key: "KEY" server_cert: "CERT" client_verify: false'))
    with pytest.raises(ServingError, match="client_verify needs custom_ca"):
        config_lib.read_ssl_options(_write(
            tmp_path, "s2.config", 'server_key: "K" server_cert: "C" client_verify: true'))


def test_proxy_config_round_trip():
    text = proxy_config.proxy_config_text(
        {"dpsr": (("h1:1", "h2:2"), ("h3:3",)), "one": (("h4:4",),)},
        deadline_ms=300, shard_deadline_ms=200, partial_policy="FAIL")
    settings = proxy_config.parse_proxy_settings(text)
    dpsr = settings.routes["dpsr"]
    assert dpsr.shards == (("h1:1", "h2:2"), ("h3:3",)) and dpsr.sharded
    assert (dpsr.deadline_s, dpsr.shard_deadline_s, dpsr.allow_partial) == (0.3, 0.2, False)
    assert not settings.routes["one"].sharded  # keyword fields apply to every model
    assert settings.outlier == proxy_config.OutlierPolicy(3, 1.0, 30.0)  # the defaults
    assert settings.hedge == proxy_config.HedgePolicy(True, 0.25, 0.01)
    tuned = proxy_config.parse_proxy_settings(
        text + "replica_retry_backoff_ms: 200 outlier_consecutive_failures: 5 "
        "outlier_max_ejection_ms: 4000 hedge_budget_fraction: 0.5 hedge_min_delay_ms: 3 "
        "disable_hedging: true")
    assert tuned.outlier == proxy_config.OutlierPolicy(5, 0.2, 4.0)
    assert tuned.hedge == proxy_config.HedgePolicy(False, 0.5, 0.003)
    assert settings.framed_sockets == {}


def test_local_replicas_name_their_framed_sockets():
    text = proxy_config.proxy_config_text(
        {"dpsr": (("h1:1", ("127.0.0.1:2", "/run/s0.sock")), (("127.0.0.1:3", "/run/s1.sock"),)),
         "again": ((("127.0.0.1:3", "/run/s1.sock"),),)})
    settings = proxy_config.parse_proxy_settings(text)
    assert settings.routes["dpsr"].shards == (("h1:1", "127.0.0.1:2"), ("127.0.0.1:3",))
    assert settings.framed_sockets == {"127.0.0.1:2": "/run/s0.sock",
                                       "127.0.0.1:3": "/run/s1.sock"}


@pytest.mark.parametrize("text, fragment", [
    ('model { name: "a" }', "lists no shard"),
    ('model { name: "a" shard { } }', "has no replica"),
    ('model { name: "a" shard { replica: "nohostport" } }', "not host:port"),
    ('model { name: "a" shard { replica: "h:1" } deadline_ms: 100 shard_deadline_ms: 200 }',
     "exceeds"),
    ('model { name: "a" shard { replica: "h:1" } } model { name: "a" shard { replica: "h:1" } }',
     "appears twice"),
    ("", "no model"),
    ('model { name: "a" shard { replica: "h:1" } partial_policy: SOMETIMES }', "SOMETIMES"),
    ('model { name: "a" shard { replica: "h:1" } } hedge_budget_fraction: 1.5',
     "hedge_budget_fraction is 1.5"),
    ('model { name: "a" shard { replica: "h:1" } } outlier_consecutive_failures: -2',
     "outlier_consecutive_failures is -2"),
    ('model { name: "a" shard { replica: "h:1" } } outlier_max_ejection_ms: -1',
     "outlier_max_ejection_ms must be >= 0"),
    ('model { name: "a" shard { local_replica { address: "h:1" framed_socket: "s.sock" } } }',
     "framed_socket 's.sock' must be an absolute path"),
    ('model { name: "a" shard { local_replica { address: "h:1" } } }',
     "framed_socket '' must be an absolute path"),
    ('model { name: "a" shard { local_replica { address: "h" framed_socket: "/s" } } }',
     "not host:port"),
    ('model { name: "a" shard { local_replica { address: "h:1" framed_socket: "/s" } } } '
     'model { name: "b" shard { local_replica { address: "h:1" framed_socket: "/t" } } }',
     "framed_socket '/t' differs from '/s'"),
    ('model { name: "a" shard { local_replica { address: "h:1" framed_socket: "/s" } } } '
     'model { name: "b" shard { replica: "h:1" } }', "listed both as a replica and as a "
     "local_replica"),
    ('model { name: "a" shard { local_replica { address: "h:1" framed_socket: "/s" } } '
     'shard { local_replica { address: "h:2" framed_socket: "/s" } } }',
     "framed_socket '/s' is also local_replica 'h:1's"),
    ('model { name: "a" shard { local_replica { address: "h:1" framed_socket: "/' + "x" * 107
     + '" } } }', "longer than a UNIX socket's path may be (107 bytes)"),
])
def test_bad_proxy_configs(text, fragment):
    with pytest.raises(ServingError) as e:
        proxy_config.parse_proxy_settings(text, "proxy.config")
    assert fragment in e.value.message and e.value.code == grpc.StatusCode.INVALID_ARGUMENT
