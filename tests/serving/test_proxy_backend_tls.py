"""The proxy speaks TLS to its model servers: a CA made by openssl here
signs a server certificate and a client certificate; the model server requires client
certificates (client_verify), the proxy presents its own and verifies the server's. A proxy
without the backend TLS flags cannot reach that server."""
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from dpsr_tf.demo import server_processes as process
from tests.support.serving_testing import outputs, predict_request, rpc_error

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(work, ca_key, ca_cert, name, san):
    key, csr, cert = work / f"{name}.key", work / f"{name}.csr", work / f"{name}.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}")
    ext = work / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext))
    return key, cert


@pytest.fixture(scope="module")
def stack(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("backend_tls")
    ca_key, ca_cert = work / "ca.key", work / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
             str(ca_key), "-out", str(ca_cert), "-subj", "/CN=dpsr test CA")
    server_key, server_cert = _signed(work, ca_key, ca_cert, "server",
                                      "IP:127.0.0.1,DNS:localhost")
    client_key, client_cert = _signed(work, ca_key, ca_cert, "proxy", "DNS:proxy")
    escape = lambda pem: pem.read_text().replace("\n", "\\n")  # noqa: E731 (text-proto string)
    ssl_config = work / "ssl.config"
    ssl_config.write_text(f'server_key: "{escape(server_key)}"\n'
                          f'server_cert: "{escape(server_cert)}"\n'
                          f'custom_ca: "{escape(ca_cert)}"\nclient_verify: true\n')
    client_credentials = grpc.ssl_channel_credentials(
        ca_cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
    server = process.start_model_server(toy_model_dir, "dpsr", log_dir=str(work),
                                        credentials=client_credentials,
                                        flags=[f"--ssl_config_file={ssl_config}"])
    routes = {"dpsr": ((server.address,),)}
    secure_proxy = process.proxy_process(
        routes, name="proxy_tls", log_dir=str(work), deadline_ms=20000,
        flags=[f"--backend_ca_file={ca_cert}", f"--backend_client_cert_file={client_cert}",
               f"--backend_client_key_file={client_key}"])
    plain_proxy = process.proxy_process(routes, name="proxy_plain", log_dir=str(work),
                                        deadline_ms=3000)
    process.start_all([secure_proxy, plain_proxy])
    yield {"server": server, "secure": secure_proxy, "plain": plain_proxy,
           "credentials": client_credentials}
    for p in (secure_proxy, plain_proxy, server):
        p.stop()


def test_proxy_reaches_a_mutual_tls_server(stack):
    request = predict_request("dpsr", ["apple phone", "cordless drill"], k=5)
    direct = outputs(process.prediction_stub(stack["server"].address, stack["credentials"])
                     .Predict(request, timeout=30))
    via_proxy = outputs(process.prediction_stub(stack["secure"].address)
                        .Predict(request, timeout=30))
    assert via_proxy["item_ids"].tolist() == direct["item_ids"].tolist()
    np.testing.assert_allclose(via_proxy["scores"], direct["scores"], rtol=1e-6)


def test_proxy_without_backend_tls_cannot_reach_it(stack):
    error = rpc_error(process.prediction_stub(stack["plain"].address).Predict,
                      predict_request("dpsr", ["apple phone"], k=5), timeout=30)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
