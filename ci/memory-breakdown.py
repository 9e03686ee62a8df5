"""Where the agent's idle memory goes (docs/performance.md, issue 16 item 4).

Two views, each from real processes:

1. layers: RSS (and its anonymous part, from /proc/self/smaps_rollup) of fresh Python
   processes that import one more layer each, up to a real idle agent, then the same
   agent holding N idle connections;
2. tracemalloc: the agent's live Python allocations once it listens, by package.

The agent validates its config in a short-lived child (secretivex.config.isolated): the
agent process itself never imports pydantic or the config models.

Usage: .venv/bin/python ci/memory-breakdown.py [--connections 1000] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS: list[tuple[str, str]] = [
    ("python -c pass", "pass"),
    ("+ anyio, uvloop", "import anyio, uvloop"),
    ("+ cryptography (ed25519, ec, rsa)",
     "import anyio, uvloop\nfrom cryptography.hazmat.primitives.asymmetric import ed25519, ec, rsa"),
    ("+ the agent's modules (server, stores, policy, runtime settings)", "import anyio, uvloop\n"
     "from cryptography.hazmat.primitives.asymmetric import ed25519, ec, rsa\n"
     "import secretivex.agent.server, secretivex.cli.agent_run, secretivex.config.isolated"),
    ("(not in the agent: + pydantic and the config models, its loader child)",
     "import anyio, uvloop\n"
     "from cryptography.hazmat.primitives.asymmetric import ed25519, ec, rsa\n"
     "import secretivex.agent.server, secretivex.config.loader"),
]  # fmt: skip

PROBE = """
{code}
import re
text = open('/proc/self/smaps_rollup').read()
def kb(name):
    m = re.search(r'^' + name + r':\\s+(\\d+) kB', text, re.M)
    return int(m.group(1)) if m else 0
print(kb('Rss'), kb('Anonymous'))
"""


def smaps(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def kb(name: str) -> int:
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else 0

    return kb("Rss"), kb("Anonymous")


def layer(code: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1])


TRACE = """
import os, signal, sys, threading, time, tracemalloc
from collections import Counter
sock, out = sys.argv[1], sys.argv[2]
def dump():
    while not os.path.exists(sock):
        time.sleep(0.05)
    time.sleep(1.0)
    snap = tracemalloc.take_snapshot()
    per = Counter()
    for stat in snap.statistics('filename'):
        name = stat.traceback[0].filename
        if '/site-packages/' in name:
            key = name.split('/site-packages/')[1].split('/')[0]
        elif '/secretivex/' in name:
            key = 'secretivex/' + name.split('/secretivex/')[-1].split('/')[0]
        elif name.startswith('<'):
            key = name
        else:
            key = 'stdlib'
        per[key.removesuffix('.py')] += stat.size
    with open(out, 'w') as f:
        for key, size in per.most_common(15):
            f.write(f'{key} {size}\\n')
        f.write(f'TOTAL {sum(per.values())}\\n')
    os.kill(os.getpid(), signal.SIGTERM)
# After the fork that validates the config in a child: a thread before it would make
# the agent load the config in-process (it never forks once threads run).
os.register_at_fork(after_in_parent=lambda: threading.Thread(target=dump, daemon=True).start())
sys.argv = ['secretivex', 'agent', '--socket', sock]
from secretivex.cli.main import main
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = ["| layer | RSS KiB | anonymous KiB |", "| --- | --- | --- |"]
    for label, code in LAYERS:
        rss, anon = layer(code)
        lines.append(f"| {label} | {rss:,} | {anon:,} |")

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HOME": tmp, "XDG_CONFIG_HOME": f"{tmp}/config"}
        env.pop("SECRETIVEX_CONFIG", None)
        sock = f"{tmp}/agent.sock"
        agent = subprocess.Popen(
            [sys.executable, "-m", "secretivex", "agent", "--socket", sock],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not os.path.exists(sock):
                time.sleep(0.02)
            time.sleep(1.5)
            rss, anon = smaps(agent.pid)
            lines.append(f"| **the agent, idle (listening, no keys)** | {rss:,} | {anon:,} |")
            held = []
            for _ in range(args.connections):
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(b"\x00\x00\x00\x01\x0b")  # list identities: a served connection
                s.recv(4096)
                held.append(s)
            time.sleep(1.0)
            rss2, anon2 = smaps(agent.pid)
            lines.append(
                f"| the agent with {args.connections} idle connections | {rss2:,} | {anon2:,} |"
            )
            per_conn = (rss2 - rss) * 1024 / max(args.connections, 1)
            for s in held:
                s.close()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        trace_out = f"{tmp}/trace.txt"
        sock2 = f"{tmp}/agent2.sock"
        subprocess.run(
            [sys.executable, "-X", "tracemalloc=1", "-c", TRACE, sock2, trace_out],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
            check=False,
        )  # fmt: skip
        trace = Path(trace_out).read_text().split("\n") if Path(trace_out).exists() else []
    lines += ["", f"Per idle connection: {per_conn:,.0f} bytes of RSS.", ""]
    lines += ["| package (tracemalloc, live Python allocations) | KiB |", "| --- | --- |"]
    for row in trace:
        if row.strip():
            name, size = row.rsplit(" ", 1)
            lines.append(f"| {name} | {int(size) / 1024:,.0f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
