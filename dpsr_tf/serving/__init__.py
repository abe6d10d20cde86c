"""DPSR serving: a TF-Serving-API model server for DPSR SavedModels and the sharding proxy.

docs/serving.md describes both programs (`dpsr serve`, `dpsr proxy`), their flags and config
files; the table at its end maps each module here to its role.
"""
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server import ServerOptions, run_model_server
from dpsr_tf.serving.proxy import ProxyOptions, run_proxy

__all__ = ["ProxyOptions", "ServerOptions", "ServingError", "run_model_server", "run_proxy"]
