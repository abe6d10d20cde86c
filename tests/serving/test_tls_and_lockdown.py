"""A locked-down server: TLS from --ssl_config_file (a certificate made by openssl here),
HandleReloadConfigRequest refused, model paths confined to a root, loopback only."""
import shutil
import subprocess

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from tests.support.serving_testing import outputs, predict_request, rpc_error

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tls_server(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("tls")
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    ssl_config = work / "ssl.config"
    escape = lambda pem: pem.read_text().replace("\n", "\\n")  # noqa: E731 (text-proto string)
    ssl_config.write_text(f'server_key: "{escape(key)}"\nserver_cert: "{escape(cert)}"\n'
                          "client_verify: false\n")
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    server = process.start_model_server(
        toy_model_dir, "dpsr", log_dir=str(work), credentials=credentials,
        flags=[f"--ssl_config_file={ssl_config}", "--allow_reload_config_request=false",
               f"--model_base_path_root={toy_model_dir}"])
    yield server, credentials
    server.stop()


def test_tls_clients_are_served_and_plaintext_is_refused(tls_server):
    server, credentials = tls_server
    secure = process.prediction_stub(server.address, credentials)
    response = secure.Predict(predict_request("dpsr", ["apple phone"], k=3), timeout=30)
    assert outputs(response)["item_ids"].shape == (1, 3)
    plain = process.prediction_stub(server.address)
    # The handshake fails at once; the deadline only guards a hang (a loaded machine is slow).
    error = rpc_error(plain.Predict, predict_request("dpsr", ["apple phone"]), timeout=60)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_reload_requests_are_refused(tls_server):
    server, credentials = tls_server
    models = model_service_pb2_grpc.ModelServiceStub(
        grpc.secure_channel(server.address, credentials))
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="x", base_path="/tmp/x")
    error = rpc_error(models.HandleReloadConfigRequest, request, timeout=30)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_base_path_outside_the_root_does_not_start(toy_model_dir, tmp_path):
    server = process.model_server_process(toy_model_dir, "dpsr", log_dir=str(tmp_path),
                                          flags=[f"--model_base_path_root={tmp_path}"])
    with pytest.raises(RuntimeError, match="outside the allowed root"):
        server.start()


def _pem_pair(work, name):
    key, cert = work / f"{name}.key", work / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return key.read_text(), cert.read_text()


@pytest.mark.parametrize("case,needle", [
    ("garbage certificate", "server_cert and server_key are not a PEM certificate"),
    ("key of another certificate", "KEY_VALUES_MISMATCH"),
    ("garbage custom_ca", "custom_ca is not a PEM certificate"),
])
def test_bad_certificate_is_reported_as_such(tmp_path, case, needle):
    """Before: a bad certificate made `dpsr serve` say "cannot bind (in use?)"."""
    from dpsr_tf.serving import config as config_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.serving.errors import ServingError  # pylint: disable=import-outside-toplevel
    key, cert = _pem_pair(tmp_path, "a")
    other_key, _ = _pem_pair(tmp_path, "b")
    ca = ""
    if case == "garbage certificate":
        cert = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    elif case == "key of another certificate":
        key = other_key
    else:
        ca = "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"
    escape = lambda pem: pem.replace("\n", "\\n")  # noqa: E731
    path = tmp_path / "ssl.config"
    path.write_text(f'server_key: "{escape(key)}"\nserver_cert: "{escape(cert)}"\n'
                    f'custom_ca: "{escape(ca)}"\n')
    with pytest.raises(ServingError) as info:
        config_lib.read_ssl_options(str(path))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.message and str(path) in info.value.message
