"""The attacker's own agent client, run inside the container (no secretivex import).

python3 agentctl.py SOCK list                 -> one "comment" per line, or "failure"
python3 agentctl.py SOCK sign PUBFILE         -> "signature" or "failure"
python3 agentctl.py SOCK ext NAME [HEX]       -> "success" | "failure" | "ext-failure" | "closed"
python3 agentctl.py SOCK forged-bind          -> reply to a session-bind with a bad signature
python3 agentctl.py SOCK own-bind PUBFILE     -> session-bind signed with a host key we own,
                                                 then sign with PUBFILE on that connection
python3 agentctl.py SOCK hold N OUT           -> open N connections, keep the served ones;
                                                 writes "<served>" to OUT, then sleeps
python3 agentctl.py SOCK huge-frame           -> "closed" when the agent hangs up
python3 agentctl.py SOCK slow-frame           -> seconds until the agent hung up
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import sys
import time


def s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def call(sock: socket.socket, body: bytes) -> bytes:
    sock.sendall(frame(body))
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, n)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def strings(buf: bytes) -> list[bytes]:
    out = []
    while buf:
        (n,) = struct.unpack(">I", buf[:4])
        out.append(buf[4 : 4 + n])
        buf = buf[4 + n :]
    return out


def verdict(reply: bytes) -> str:
    return {5: "failure", 6: "success", 14: "signature", 28: "ext-failure", 29: "ext-response"}.get(
        reply[0], f"type-{reply[0]}"
    )


def pub_blob(path: str) -> bytes:
    return base64.b64decode(open(path).read().split()[1])


def sign(sock: socket.socket, blob: bytes) -> str:
    return verdict(call(sock, bytes([13]) + s(blob) + s(b"attacker data") + struct.pack(">I", 0)))


def host_key_bind(sock: socket.socket, forge: bool) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    host = Ed25519PrivateKey.generate()
    raw = host.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    blob = s(b"ssh-ed25519") + s(raw)
    session_id = os.urandom(32)
    signed = os.urandom(64) if forge else host.sign(session_id)
    sig = s(b"ssh-ed25519") + s(signed)
    body = s(b"session-bind@openssh.com") + s(blob) + s(session_id) + s(sig) + b"\x00"
    return verdict(call(sock, bytes([27]) + body))


def main() -> None:
    path, cmd, *args = sys.argv[1:]
    if cmd == "list":
        reply = call(connect(path), bytes([11]))
        if reply[0] != 12:
            print(verdict(reply))
            return
        (count,) = struct.unpack(">I", reply[1:5])
        rest = reply[5:]
        for _ in range(count):
            (n,) = struct.unpack(">I", rest[:4])
            rest = rest[4 + n :]
            (n,) = struct.unpack(">I", rest[:4])
            print(rest[4 : 4 + n].decode())
            rest = rest[4 + n :]
    elif cmd == "sign":
        print(sign(connect(path), pub_blob(args[0])))
    elif cmd == "ext":
        payload = bytes.fromhex(args[1]) if len(args) > 1 else b""
        try:
            print(verdict(call(connect(path), bytes([27]) + s(args[0].encode()) + payload)))
        except ConnectionError:
            print("closed")
    elif cmd == "forged-bind":
        print(host_key_bind(connect(path), forge=True))
    elif cmd == "own-bind":
        sock = connect(path)
        print(host_key_bind(sock, forge=False), sign(sock, pub_blob(args[0])))
    elif cmd == "hold":
        held = []
        for _ in range(int(args[0])):
            try:
                sock = connect(path)
                sock.settimeout(2)
                if call(sock, bytes([11]))[0] == 12:
                    held.append(sock)
            except (OSError, ConnectionError):
                pass
        with open(args[1] + ".tmp", "w") as fh:
            fh.write(f"{len(held)}\n")
        os.rename(args[1] + ".tmp", args[1])
        time.sleep(600)
    elif cmd == "huge-frame":
        sock = connect(path)
        sock.sendall(struct.pack(">I", 0xFFFFFFF0) + b"\x0b" * 65536)
        try:
            print("closed" if sock.recv(1) == b"" else "answered")
        except ConnectionResetError:
            print("closed")
    elif cmd == "slow-frame":
        sock = connect(path)
        start = time.monotonic()
        try:
            sock.sendall(struct.pack(">I", 100))
            for _ in range(100):
                time.sleep(0.2)
                sock.sendall(b"\x0b")
        except (BrokenPipeError, ConnectionResetError):
            print(f"{time.monotonic() - start:.1f}")
            return
        print("never")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
