"""AgentClient / SyncAgentClient against a scripted agent: answers, errors, timeouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_bench_engine import KEY, FakeAgent

from secretivex.client import (
    AgentClient,
    AgentFailure,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
    SyncAgentClient,
    default_socket_path,
    resolve_socket_path,
)
from secretivex.keys.signatures import verify_signature
from secretivex.protocol import Extension, ExtensionResponse, encode_response, frame


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "agent.sock"


def test_socket_resolution_order(tmp_path: Path) -> None:
    env = {"SSH_AUTH_SOCK": "/run/a.sock", "XDG_RUNTIME_DIR": "/run/user/7", "HOME": "/h"}
    assert resolve_socket_path("/explicit.sock", env) == Path("/explicit.sock")
    assert resolve_socket_path(None, env) == Path("/run/a.sock")
    del env["SSH_AUTH_SOCK"]
    assert resolve_socket_path(None, env) == Path("/run/user/7/secretivex/agent.sock")
    assert default_socket_path({"HOME": "/h"}) == Path("/h/.secretivex/agent.sock")


def test_async_list_and_sign(sock: Path) -> None:
    async def main() -> None:
        async with AgentClient.connect(sock) as agent:
            (identity,) = await agent.list_identities()
            assert identity.comment == "fake-key"
            assert identity.key_type == "ssh-ed25519"
            assert identity.fingerprint == KEY.fingerprint
            signature = await agent.sign(identity.blob, b"data")
            assert verify_signature(identity.blob, b"data", signature)
            assert identity.as_dict()["public_key"].startswith("ssh-ed25519 AAAA")

    with FakeAgent(sock):
        anyio.run(main)


def test_await_form_and_aclose(sock: Path) -> None:
    async def main() -> None:
        agent = await AgentClient.connect(str(sock))
        try:
            assert len(await agent.list_identities()) == 1
        finally:
            await agent.aclose()
        with pytest.raises(AgentUnavailable, match="closed"):
            await agent.list_identities()

    with FakeAgent(sock):
        anyio.run(main)


def test_unreachable_agent_is_one_clear_line(sock: Path) -> None:
    async def main() -> None:
        with pytest.raises(AgentUnavailable) as info:
            await AgentClient.connect(sock)
        assert str(info.value) == f"cannot connect to the agent at {sock}: no such socket"

    anyio.run(main)
    with pytest.raises(AgentUnavailable, match="no such socket"):
        SyncAgentClient.connect(sock)
    sock.write_text("")
    with pytest.raises(AgentUnavailable, match="connection refused"):
        SyncAgentClient.connect(sock)


def test_stalled_agent_times_out(sock: Path) -> None:
    async def main() -> None:
        async with AgentClient.connect(sock, response_timeout=0.2) as agent:
            (identity,) = await agent.list_identities()
            with pytest.raises(AgentTimeout, match=r"did not answer within 0\.2 s"):
                await agent.sign(identity.blob, b"x")
            with pytest.raises(AgentUnavailable):  # the connection is poisoned
                await agent.list_identities()

    with FakeAgent(sock, mode="stall"):
        anyio.run(main)
        with SyncAgentClient.connect(sock, response_timeout=0.2) as agent:
            (identity,) = agent.list_identities()
            with pytest.raises(AgentTimeout):
                agent.sign(identity.blob, b"x")


def test_failure_and_hangup(sock: Path) -> None:
    with FakeAgent(sock, mode="failure"), SyncAgentClient.connect(sock) as agent:
        (identity,) = agent.list_identities()
        with pytest.raises(AgentFailure, match="refused"):
            agent.sign(identity.blob, b"x")
    sock.unlink()
    with FakeAgent(sock, mode="hangup"), SyncAgentClient.connect(sock) as agent:
        (identity,) = agent.list_identities()
        with pytest.raises(AgentProtocolError, match="closed the connection"):
            agent.sign(identity.blob, b"x")


class HealthAgent(FakeAgent):
    def __init__(self, path: Path, document: bytes | None) -> None:
        super().__init__(path)
        self.document = document

    def _answer(self, payload: bytes) -> bytes | None:
        from secretivex.protocol import parse_request

        request = parse_request(payload)
        if isinstance(request, Extension):
            if self.document is None:
                return b"\x00\x00\x00\x01\x05"
            return frame(encode_response(ExtensionResponse(request.name, self.document)))
        return super()._answer(payload)


def test_health_extension(sock: Path) -> None:
    document = {"version": "0.1.0", "locked": False, "stores": [], "listeners": []}
    with HealthAgent(sock, json.dumps(document).encode()), SyncAgentClient.connect(sock) as agent:
        assert agent.health() == document
    sock.unlink()
    with HealthAgent(sock, None), SyncAgentClient.connect(sock) as agent:
        assert agent.health() is None  # OpenSSH-like: no such extension
    sock.unlink()

    async def main() -> None:
        async with AgentClient.connect(sock) as agent:
            with pytest.raises(AgentProtocolError, match="not UTF-8 JSON"):
                await agent.health()

    with HealthAgent(sock, b"\xff not json"):
        anyio.run(main)


def test_add_identity_requires_a_key_object() -> None:
    from secretivex.client._common import build_add_identity

    with pytest.raises(TypeError):
        build_add_identity("not a key")
    message = build_add_identity(KEY, lifetime=60, confirm=True)
    assert message.comment == "fake-key"
    assert message.constraints.lifetime == 60 and message.constraints.confirm
    assert message.key.public_blob() == KEY.public_blob
