"""Text-proto message types that the tensorflow-serving-api wheel does not ship.

The wheel has ModelServerConfig (tensorflow_serving/config/model_server_config.proto) but not
BatchingParameters (servables/tensorflow/session_bundle_config.proto), MonitoringConfig
(config/monitoring_config.proto) or SSLConfig (config/ssl_config.proto), and no protoc is
available at run time. So their descriptors are built here, field for field with the TF Serving
names and types, in a private descriptor pool (no clash if a later wheel ships them). Config
files written for tensorflow_model_server parse unchanged.

The proxy's own config (ProxyConfig, package dpsr.serving) is defined the same way.

Only the text format is used; the field numbers follow TF Serving where known.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64, "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT,
}

# (message name, [(field name, number, type, repeated)]); a type that is not a scalar is a
# message or enum name (fully qualified with a leading dot).
_TF_SERVING_MESSAGES = [
    ("BatchingParameters", [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", 6, "int64", True),
        ("pad_variable_length_inputs", 7, "bool", False),
        ("enable_large_batch_splitting", 8, "bool", False),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value", False),
    ]),
    ("PrometheusConfig", [("enable", 1, "bool", False), ("path", 2, "string", False)]),
    ("MonitoringConfig", [
        ("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False)]),
    ("SSLConfig", [
        ("server_key", 1, "string", False), ("server_cert", 2, "string", False),
        ("custom_ca", 3, "string", False), ("client_verify", 4, "bool", False)]),
]

_PROXY_ENUMS = [("PartialPolicy", ["ALLOW_PARTIAL", "FAIL"])]
_PROXY_MESSAGES = [
    ("LocalReplica", [  # a model server on the proxy's host: Predict as frames
        ("address", 1, "string", False),  # host:port of its gRPC (every other method)
        ("framed_socket", 2, "string", False),  # its --framed_predict_socket
    ]),
    ("Shard", [
        ("replica", 1, "string", True),  # host:port of each model server holding this shard
        ("name", 2, "string", False),
        ("local_replica", 3, ".dpsr.serving.LocalReplica", True),
    ]),
    ("ProxyModel", [
        ("name", 1, "string", False),  # model name clients ask for
        ("shard", 2, ".dpsr.serving.Shard", True),  # one shard = replicated, unsharded model
        ("backend_model_name", 3, "string", False),  # name on the model servers (default: name)
        ("deadline_ms", 4, "int64", False),  # per-request deadline (0: proxy default)
        ("shard_deadline_ms", 5, "int64", False),  # per-shard answer deadline (0: 80% of it)
        ("partial_policy", 6, ".dpsr.serving.PartialPolicy", False),
        ("id_output", 7, "string", False),  # merge key output (default item_ids)
        ("score_output", 8, "string", False),  # merge score output (default scores)
        ("k_input", 9, "string", False),  # the request's k input (default k)
    ]),
    ("ProxyConfig", [
        ("model", 1, ".dpsr.serving.ProxyModel", True),
        ("default_deadline_ms", 2, "int64", False),
        ("replica_retry_backoff_ms", 3, "int64", False),  # first ejection of a replica
        ("outlier_consecutive_failures", 4, "int64", False),  # failures in a row that eject
        ("outlier_max_ejection_ms", 5, "int64", False),  # cap of the doubling ejection time
        ("hedge_budget_fraction", 6, "double", False),  # of the remaining deadline, per attempt
        ("hedge_min_delay_ms", 7, "int64", False),  # floor of the latency-based hedge delay
        ("disable_hedging", 8, "bool", False),  # no second attempt before the first fails
    ]),
]


def _file_proto(name, package, messages, enums=(), dependencies=()):
    fd = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    fd.dependency.extend(dependencies)
    for enum_name, values in enums:
        enum = fd.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    enum_names = {f".{package}.{e}" for e, _ in enums}
    for msg_name, fields in messages:
        msg = fd.message_type.add(name=msg_name)
        for field_name, number, type_name, repeated in fields:
            field = msg.field.add(name=field_name, number=number,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type = _F.TYPE_ENUM if type_name in enum_names else _F.TYPE_MESSAGE
                field.type_name = type_name
    return fd


def _build_pool():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(_file_proto("dpsr/serving/tf_serving_configs.proto", "tensorflow.serving",
                         _TF_SERVING_MESSAGES, dependencies=["google/protobuf/wrappers.proto"]))
    pool.Add(_file_proto("dpsr/serving/proxy_config.proto", "dpsr.serving", _PROXY_MESSAGES,
                         enums=_PROXY_ENUMS))
    return pool


_POOL = _build_pool()


def _message_class(full_name):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


BatchingParameters = _message_class("tensorflow.serving.BatchingParameters")
PrometheusConfig = _message_class("tensorflow.serving.PrometheusConfig")
MonitoringConfig = _message_class("tensorflow.serving.MonitoringConfig")
SSLConfig = _message_class("tensorflow.serving.SSLConfig")
LocalReplica = _message_class("dpsr.serving.LocalReplica")
Shard = _message_class("dpsr.serving.Shard")
ProxyModel = _message_class("dpsr.serving.ProxyModel")
ProxyConfig = _message_class("dpsr.serving.ProxyConfig")
PARTIAL_POLICY = _POOL.FindEnumTypeByName("dpsr.serving.PartialPolicy")
