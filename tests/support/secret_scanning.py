"""GitHub's side of secret scanning for tests: signing keys generated here, published by a real
key server on 127.0.0.1 in GitHub's /meta/public_keys/secret_scanning format, and reports."""

from __future__ import annotations

import base64

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PATH = "/v1/secret-scanning/github"


class Signer:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.private = ec.generate_private_key(ec.SECP256R1())

    def pem(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


class KeyServer:
    """GitHub's /meta/public_keys/secret_scanning: ``published`` signers, ``fetches`` counted."""

    def __init__(self) -> None:
        self.published: list[Signer] = []
        self.fetches = 0
        self.down = False
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response({"public_keys": [
            {"key_identifier": s.key_id, "key": s.pem(), "is_current": i == 0} for i, s in enumerate(self.published)]})

    async def start(self, aiohttp_server) -> KeyServer:
        app = web.Application()
        app.router.add_get("/meta/public_keys/secret_scanning", self.handle)
        running = self._running = await aiohttp_server(app)
        self.url = str(running.make_url("/meta/public_keys/secret_scanning"))
        return self

    async def stop(self) -> None:
        """Stop listening (connections are refused) until resume()."""
        for site in list(self._running.runner.sites):
            await site.stop()

    async def resume(self) -> None:
        """Listen again on the same port."""
        await web.TCPSite(self._running.runner, self._running.host, self._running.port).start()


def report(*tokens: str, url: str = "https://github.com/octo/repo/blob/abc/config.py", source: str = "content"):
    return msgspec.json.encode([{"token": t, "type": "suiteop_api_key", "url": url, "source": source} for t in tokens])


async def send(stack, body: bytes, signer: Signer | None, *, signature: str | None = None,
               headers: dict | None = None, key_id: str | None = None):
    """POST a report to the stack's admin API (signed by ``signer``, unless None)."""
    h = {"Content-Type": "application/json"}
    if signer is not None:
        h["Github-Public-Key-Identifier"] = key_id or signer.key_id
        h["Github-Public-Key-Signature"] = signature or signer.sign(body)
    h.update(headers or {})
    return await stack.admin_call("POST", PATH, token=None, data=body, headers=h)
