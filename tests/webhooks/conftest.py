"""Fixtures for webhook tests: real HTTP(S) receivers on loopback, delivery clients, and for
the delivery tests a session factory, settings that allow loopback receivers, and SMTP."""

from __future__ import annotations

import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from service.app import ConduitASGI
from service.infra.address_policy import AddressPolicy
from service.infra.settings import Settings
from service.webhooks.http import WebhookClient
from tests.webhooks.receivers import (
    CertificateFiles,
    Receiver,
    make_certificates,
    running_receiver,
)

LOOPBACK = AddressPolicy.build(allow_http=True, allowlist=["127.0.0.0/8", "::1"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain-HTTP receiver on 127.0.0.1."""
    with running_receiver("127.0.0.1") as server:
        yield server


@pytest.fixture
def receiver6() -> Iterator[Receiver]:
    """A plain-HTTP receiver on ::1 (skipped where IPv6 loopback is missing)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with running_receiver("::1") as server:
        yield server


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    """A test CA and a leaf certificate for `localhost` (needs the openssl tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command-line tool not installed")
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_receiver(certificates: CertificateFiles) -> Iterator[Receiver]:
    """An HTTPS receiver on 127.0.0.1 presenting the `localhost` certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    with running_receiver("127.0.0.1", tls=context) as server:
        yield server


@pytest_asyncio.fixture
async def client() -> AsyncIterator[WebhookClient]:
    """A delivery client allowing http and the loopback addresses."""
    async with WebhookClient(policy=LOOPBACK) as webhook_client:
        yield webhook_client


@pytest.fixture
def delivery_settings(settings: Settings) -> Settings:
    """The test settings with loopback receivers allowed (plain http is allowed in tests)."""
    return settings.model_copy(update={"webhook_allowlist": "127.0.0.0/8,::1"})


@pytest.fixture
def api_allows_loopback(app: ConduitASGI, delivery_settings: Settings) -> Iterator[None]:
    """The app under test accepts webhooks on loopback receivers, for this test only."""
    config = app.flask_app.config
    original = config["CONDUIT_SETTINGS"]
    config["CONDUIT_SETTINGS"] = delivery_settings
    yield
    config["CONDUIT_SETTINGS"] = original


@pytest_asyncio.fixture
async def api(app: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app under test (`client` here is the delivery client)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
