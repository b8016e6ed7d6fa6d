"""A live `lokal serve` with everything on: TLS (a CA and certificate made here with `cryptography`), API keys
required (LOKAL_AUTH=on), per-key rate limits and the audit log. The official clients are the judges:
openai (api_key=), ollama (headers=), and lokal's own Client (LOKAL_API_KEY, LOKAL_CA_CERT)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from lokal.security.audit import verify
from lokal.security.keys import KeyStore
from lokal.security.roles import Role
from server_fixture import GREEDY, MODEL, free_port, model_store, start_server  # noqa: F401


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lokal test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def secured(model_store, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca_path, cert_path, key_path = make_certificates(directory)
    keys = KeyStore(model_store / "security" / "keys.json")
    created = {role: keys.create(role, name=role.label) for role in Role}
    limited = keys.create(Role.VIEWER, name="limited", requests_per_minute=3)
    token_limited = keys.create(Role.USER, name="token-limited", tokens_per_minute=5)
    context = ssl.create_default_context(cafile=str(ca_path))
    server = start_server(model_store, directory / "serve.log", scheme="https", verify=context, auth="on",
                          tls_cert=str(cert_path), tls_key=str(key_path))
    server.ca_path = ca_path
    server.ssl_context = context
    server.keys = {role: entry.key for role, entry in created.items()}
    server.key_ids = {role: entry.record.id for role, entry in created.items()}
    server.limited = limited.key
    server.token_limited = token_limited.key
    yield server
    assert server.stop() == 0, server.log()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_tls_round_trip_with_lokal_client(secured, monkeypatch):
    from lokal.client import Client

    monkeypatch.setenv("LOKAL_API_KEY", secured.keys[Role.VIEWER])
    monkeypatch.setenv("LOKAL_CA_CERT", str(secured.ca_path))
    with Client(secured.url) as client:
        assert client.version() == __import__("lokal").__version__
        assert any(m["name"].startswith(MODEL) for m in client.list()["models"])
    # Without the CA the certificate is not trusted; plain HTTP to the TLS port gets no answer.
    with pytest.raises(httpx.ConnectError):
        httpx.get(secured.url + "/api/version", headers=bearer(secured.keys[Role.VIEWER]))


def test_openai_client_with_api_key(secured):
    import openai

    http_client = httpx.Client(verify=secured.ssl_context)
    client = openai.OpenAI(base_url=secured.url + "/v1", api_key=secured.keys[Role.USER], http_client=http_client)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=4, temperature=0)
    assert answer.choices[0].message.content
    refused = openai.OpenAI(base_url=secured.url + "/v1", api_key="lokal-00000000-wrongwrongwrongwrongwrong",
                            http_client=http_client, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.models.list()
    viewer = openai.OpenAI(base_url=secured.url + "/v1", api_key=secured.keys[Role.VIEWER],
                           http_client=http_client, max_retries=0)
    assert any(model.id.startswith(MODEL) for model in viewer.models.list())
    with pytest.raises(openai.PermissionDeniedError):
        viewer.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_ollama_client_with_headers(secured):
    import ollama

    client = ollama.Client(host=secured.url, headers=bearer(secured.keys[Role.USER]), verify=secured.ssl_context)
    answer = client.generate(model=MODEL, prompt="1, 2, 3,", options=GREEDY)
    assert answer.response
    anonymous = ollama.Client(host=secured.url, verify=secured.ssl_context)
    with pytest.raises(ollama.ResponseError) as refused:
        anonymous.list()
    assert refused.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as forbidden:
        client.delete(MODEL)  # a user key may not delete
    assert forbidden.value.status_code == 403


def test_inference_is_audited_without_text(secured):
    http = httpx.Client(base_url=secured.url, verify=secured.ssl_context, timeout=120)
    prompt = "Name a colour, the secret word is pineapple"
    response = http.post("/api/chat", headers=bearer(secured.keys[Role.USER]),
                         json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": False,
                               "options": GREEDY})
    assert response.status_code == 200, response.text
    body = response.json()
    denied = http.get("/api/tags")
    assert denied.status_code == 401
    log_path = secured.models / "security" / "audit.log"
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    chat = next(r for r in reversed(records) if r["route"] == "POST /api/chat" and r["status"] == 200)
    assert chat["key"] == secured.key_ids[Role.USER] and chat["role"] == "user"
    assert chat["model"] == MODEL and chat["client"] == "127.0.0.1"
    assert (chat["tokens_in"], chat["tokens_out"]) == (body["prompt_eval_count"], body["eval_count"])
    assert chat["request_id"] == response.headers["X-Request-Id"] and chat["duration_ms"] > 0
    assert records[-1]["route"] == "GET /api/tags" and records[-1]["status"] == 401
    assert "pineapple" not in log_path.read_text()  # no prompt or output text unless LOKAL_AUDIT_CONTENT=1
    assert verify(log_path).is_intact


def test_request_rate_limit_answers_429_with_retry_after(secured):
    http = httpx.Client(base_url=secured.url, verify=secured.ssl_context)
    statuses = [http.get("/api/tags", headers=bearer(secured.limited)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = http.get("/api/tags", headers=bearer(secured.limited))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "rate limit" in refused.json()["error"]
    # Other keys are not affected.
    assert http.get("/api/tags", headers=bearer(secured.keys[Role.VIEWER])).status_code == 200


def test_token_rate_limit(secured):
    http = httpx.Client(base_url=secured.url, verify=secured.ssl_context, timeout=120)
    body = {"model": MODEL, "prompt": "1, 2, 3,", "stream": False, "options": GREEDY}
    first = http.post("/api/generate", headers=bearer(secured.token_limited), json=body)
    assert first.status_code == 200, first.text  # admitted: nothing used yet; it uses more than 5 tokens
    second = http.post("/api/generate", headers=bearer(secured.token_limited), json=body)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1


class _GGUFHandler(BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()

    def do_GET(self):  # noqa: N802
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"GGUF")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def local_file_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GGUFHandler)
    server.hits = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("url_of", [
    lambda port: f"http://127.0.0.1:{port}/model.gguf",
    lambda port: f"http://localhost:{port}/model.gguf",  # refused after DNS resolution, not by the name
    lambda port: "http://169.254.169.254/latest/meta-data/model.gguf",
], ids=["loopback", "name-resolving-to-loopback", "metadata-service"])
def test_server_side_pull_refuses_private_addresses(secured, local_file_server, url_of):
    http = httpx.Client(base_url=secured.url, verify=secured.ssl_context, timeout=60)
    response = http.post("/api/pull", headers=bearer(secured.keys[Role.OPERATOR]),
                         json={"model": url_of(local_file_server.server_address[1]), "stream": False})
    assert response.status_code == 400, response.text
    assert "LOKAL_ALLOW_PRIVATE_PULLS" in response.json()["error"]
    assert local_file_server.hits == 0


def test_serve_refuses_a_public_bind_without_keys(tmp_path):
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update({"LOKAL_MODELS": str(tmp_path / "models"), "LOKAL_HOST": f"0.0.0.0:{free_port()}"})
    result = subprocess.run([sys.executable, "-m", "lokal", "serve"], env=environ, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "lokal keys create --role admin" in result.stderr
    environ["LOKAL_AUTH"] = "off"
    result = subprocess.run([sys.executable, "-m", "lokal", "serve"], env=environ, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "--insecure-no-auth" in result.stderr


def test_anthropic_client_with_x_api_key(secured):
    import anthropic

    http_client = anthropic.DefaultHttpxClient(verify=secured.ssl_context)  # the SDK's own httpx
    client = anthropic.Anthropic(base_url=secured.url, api_key=secured.keys[Role.USER], http_client=http_client,
                                 max_retries=0)
    message = client.messages.create(model=MODEL, max_tokens=4,
                                     messages=[{"role": "user", "content": "Say hi"}])
    assert message.content[0].text
    viewer = anthropic.Anthropic(base_url=secured.url, api_key=secured.keys[Role.VIEWER], http_client=http_client,
                                 max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        viewer.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
