"""The SSRF guard's transport, against servers this test starts on loopback: addresses are judged after DNS
resolution, and again for every redirect; pulls in-process (the CLI) are not guarded, pulls a server makes for
a remote caller are (see test_security_server for those over HTTP)."""

from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from lokal.config import Settings
from lokal.security.ssrf import PrivateAddressRefused, is_public, public_only_transport
from lokal.store.sources import pull
from lokal.store.store import Store


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
])
def test_public_addresses(address, expected):
    assert is_public(ipaddress.ip_address(address)) is expected


def serve(address: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, 0), handler)
    server.hits = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):  # noqa: N802
        self.server.hits += 1
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Model(BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()

    def do_GET(self):  # noqa: N802
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    inner = serve("127.0.0.2", Model)  # the "private" server a redirect points at
    inner.body = b"GGUF"
    Redirect.target = f"http://127.0.0.2:{inner.server_address[1]}/model.gguf"
    outer = serve("127.0.0.1", Redirect)  # the "public" one (allowed by the test's rule below)
    yield outer, inner
    outer.shutdown()
    inner.shutdown()


def only_127_0_0_1(address) -> bool:
    return str(address) == "127.0.0.1"


def test_redirect_to_a_refused_address_is_refused(servers):
    outer, inner = servers
    transport = public_only_transport(is_allowed=only_127_0_0_1)
    with httpx.Client(transport=transport, follow_redirects=True) as client:
        with pytest.raises(PrivateAddressRefused, match="127.0.0.2"):
            client.get(f"http://127.0.0.1:{outer.server_address[1]}/start")
    assert outer.hits == 1 and inner.hits == 0


def test_host_names_are_judged_after_resolution(servers):
    outer, _ = servers
    with httpx.Client(transport=public_only_transport()) as client:
        with pytest.raises(PrivateAddressRefused, match="localhost"):
            client.get(f"http://localhost:{outer.server_address[1]}/")
    assert outer.hits == 0


def test_cli_pulls_are_not_guarded_and_server_pulls_are(servers, smollm2_path, tmp_path):
    _, inner = servers
    inner.body = open(smollm2_path, "rb").read()
    url = f"http://127.0.0.2:{inner.server_address[1]}/SmolLM2.gguf"
    settings = Settings(environ={"LOKAL_MODELS": str(tmp_path)})
    store = Store(tmp_path)
    with pytest.raises(PrivateAddressRefused, match="LOKAL_ALLOW_PRIVATE_PULLS"):
        list(pull(store, url, settings, allow_local_files=False, allow_private=False))
    assert inner.hits == 0
    assert list(pull(store, url, settings))[-1].status == "success"  # the CLI's default (and the setting's)
    assert store.exists("smollm2:latest")
