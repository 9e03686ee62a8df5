"""`secretivex client` commands: list, sign, health, wait-ready, metrics."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from secretivex.cli.exits import (
    EXIT_GUARDRAIL,
    EXIT_RUNTIME,
    UsageError,
    cli_errors,
    fail,
)

app = typer.Typer(
    help=(
        "Talk to a running agent (secretivex or OpenSSH's) and inspect metrics snapshots.\n\n"
        "The socket is --socket, else $SSH_AUTH_SOCK, else "
        "$XDG_RUNTIME_DIR/secretivex/agent.sock (~/.secretivex/agent.sock).\n\n"
        "Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 guardrail failed."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

SocketOpt = Annotated[
    str | None,
    typer.Option("--socket", "-s", help="Agent socket path.", show_default=False),
]
TimeoutOpt = Annotated[
    int,
    typer.Option(
        "--timeout-ms",
        help="Give up when connecting or waiting for an answer takes longer (0: wait forever).",
    ),
]


def _shown(text: object) -> str:
    """Agent-supplied text made safe for a terminal (escapes, no control characters)."""
    from secretivex.client.display import visible

    return visible(str(text))


def _connect(socket: str | None, timeout_ms: int) -> Any:
    from secretivex.client import SyncAgentClient

    seconds = timeout_ms / 1000 if timeout_ms > 0 else None
    return SyncAgentClient.connect(socket, seconds, seconds)


def _matcher(text: str) -> Any:
    from secretivex.config.matchers import MatcherError, parse_matcher

    spec = text if text.startswith(("SHA256:", "comment:", "type:")) else f"comment:{text}"
    try:
        return parse_matcher(spec)
    except MatcherError as exc:
        raise UsageError(f"--filter {text!r}: {exc}") from None


# -- list -----------------------------------------------------------------------------


@app.command("list")
@cli_errors
def list_cmd(
    socket: SocketOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON array of keys.")] = False,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter",
            "-f",
            help="Only keys matching SHA256:<fp>, comment:<glob>, type:<alg> or a comment glob.",
        ),
    ] = None,
    timeout_ms: TimeoutOpt = 5000,
) -> None:
    """List the agent's keys: fingerprint, type, comment."""
    matcher = _matcher(filter_) if filter_ else None
    with _connect(socket, timeout_ms) as agent:
        identities = agent.list_identities()
    if matcher is not None:
        identities = [
            i for i in identities if matcher.matches(i.fingerprint, i.comment, i.key_type)
        ]
    if json_out:
        typer.echo(json.dumps([i.as_dict() for i in identities], indent=2))
        return
    if not identities:
        typer.echo("The agent has no identities." if matcher is None else "No matching identities.")
        return
    for identity in identities:
        line = f"{identity.fingerprint} {_shown(identity.key_type)} {_shown(identity.comment)}"
        typer.echo(line.rstrip())


# -- sign -----------------------------------------------------------------------------


@app.command("sign")
@cli_errors
def sign_cmd(
    data: Annotated[
        Path, typer.Option("--data", help="File to sign ('-' for stdin).", show_default=False)
    ],
    key: Annotated[str | None, typer.Option("--key", help="Key fingerprint (SHA256:...).")] = None,
    comment: Annotated[
        str | None, typer.Option("--comment", help="Key comment (glob allowed).")
    ] = None,
    flags: Annotated[
        str | None, typer.Option(help="rsa-sha2-256, rsa-sha2-512, ssh-rsa or a number.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the raw signature blob here.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON with the signature.")] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Output the signature without checking it (needed for security keys and "
            "other types this command cannot verify).",
        ),
    ] = False,
    socket: SocketOpt = None,
    timeout_ms: TimeoutOpt = 30000,
) -> None:
    """Sign a file with one of the agent's keys; prints the signature blob in base64.

    Checked against the key (RSA: and the --flags algorithm) before output; exit 1 if bad.
    """
    from fnmatch import fnmatchcase

    from secretivex.bench.runner import parse_flags
    from secretivex.client import can_verify, check_signature
    from secretivex.keys.blobs import safe_type_name
    from secretivex.keys.identity import blob_type
    from secretivex.protocol import MAX_MESSAGE_SIZE

    if (key is None) == (comment is None):
        raise UsageError("give exactly one of --key FINGERPRINT or --comment GLOB")
    if key is not None and not key.startswith("SHA256:"):
        raise UsageError("--key takes a fingerprint like SHA256:... (use --comment for names)")
    try:
        flag_value = parse_flags(flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        payload = sys.stdin.buffer.read() if str(data) == "-" else data.read_bytes()
    except OSError as exc:
        fail(f"cannot read {data}: {exc.strerror or exc}")
    # A sign request carries the data, the key blob and 13 bytes of framing; agents
    # refuse (and this client cannot send) larger messages.
    if len(payload) > MAX_MESSAGE_SIZE - 1024:
        raise UsageError(
            f"--data {data}: {len(payload)} bytes is more than an agent accepts in one "
            f"sign request (at most {MAX_MESSAGE_SIZE - 1024}); sign a digest of it instead"
        )
    with _connect(socket, timeout_ms) as agent:
        identities = agent.list_identities()
        if key is not None:
            found = [i for i in identities if i.fingerprint == key]
        else:
            assert comment is not None
            found = [i for i in identities if fnmatchcase(i.comment, comment)]
        if not found:
            fail(f"no key in the agent matches {key or comment!r}")
        if len(found) > 1 and key is None:
            names = ", ".join(f"{i.comment} ({i.fingerprint})" for i in found)
            fail(f"--comment {comment!r} matches {len(found)} keys: {names}")
        identity = found[0]
        if not no_verify and not can_verify(identity.blob):
            # Said before signing: a security key would be touched for nothing.
            fail(
                f"cannot verify signatures by {identity.key_type} keys: add --no-verify to "
                "output the agent's answer unchecked"
            )
        signature = agent.sign(identity.blob, payload, flag_value)
    if no_verify:
        algorithm = safe_type_name(blob_type(signature))
    else:
        algorithm = check_signature(identity.blob, payload, flag_value, signature)
    if out is not None:
        out.write_bytes(signature)
    encoded = base64.b64encode(signature).decode("ascii")
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "fingerprint": identity.fingerprint,
                    "comment": identity.comment,
                    "algorithm": algorithm,
                    "signature": encoded,
                },
                indent=2,
            )
        )
    elif out is None:
        typer.echo(encoded)
    else:
        typer.echo(
            f"{_shown(algorithm)} signature ({len(signature)} bytes) written to {out}", err=True
        )


# -- health ---------------------------------------------------------------------------


def _duplicates(identities: list[Any]) -> list[dict[str, Any]]:
    seen: dict[str, list[str]] = {}
    for identity in identities:
        seen.setdefault(identity.fingerprint, []).append(identity.comment)
    return [
        {"fingerprint": fp, "count": len(comments), "comments": comments}
        for fp, comments in seen.items()
        if len(comments) > 1
    ]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _print_health(
    path: str,
    identities: list[Any],
    duplicates: list[dict[str, Any]],
    detail: dict[str, Any] | None,
    stores: list[dict[str, Any]],
    problems: list[str],
) -> None:
    """The text form of ``client health``; every value from the agent goes through
    ``_shown`` (it may carry terminal escapes)."""
    version = ""
    if detail and detail.get("version"):
        version = f" (secretivex {_shown(detail.get('version'))})"
    typer.echo(f"agent: {_shown(path)}{version}")
    if detail is not None:
        typer.echo(f"locked: {'yes' if detail.get('locked') else 'no'}")
    typer.echo(
        f"identities: {len(identities)} (duplicates: {len(duplicates) if duplicates else 'none'})"
    )
    for dup in duplicates:
        comments = ", ".join(_shown(c) for c in dup["comments"])
        typer.echo(f"  duplicate {dup['fingerprint']} x{dup['count']}: {comments}")
    if detail is None:
        typer.echo("stores: store detail unavailable (the agent does not answer health@secretivex)")
    else:
        typer.echo("stores:" if stores else "stores: none")
        for store in stores:
            last_error = store.get("last_error")
            error = f"  last error: {_shown(last_error)}" if last_error else ""
            typer.echo(
                f"  {_shown(store.get('name'))} ({_shown(store.get('kind'))}): "
                f"{_shown(store.get('state'))}, {_shown(store.get('keys'))} keys{error}"
            )
            for key, value in sorted(_mapping(store.get("detail")).items()):
                if value in (None, "", [], {}):
                    continue
                if key == "skipped" and isinstance(value, list):
                    # One reason per line: each names a file and why.
                    for item in value:
                        typer.echo(f"    skipped: {_shown(item)}")
                    continue
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                typer.echo(f"    {_shown(key)}: {_shown(shown)}")
        listeners = detail.get("listeners")
        if isinstance(listeners, list) and listeners:
            typer.echo("listeners:")
            for listener in listeners:
                if isinstance(listener, dict):
                    text = listener.get("socket") or json.dumps(listener, sort_keys=True)
                    typer.echo(f"  {_shown(text)}")
                else:
                    typer.echo(f"  {_shown(listener)}")
    for problem in problems:
        typer.echo(f"problem: {_shown(problem)}")


@app.command("health")
@cli_errors
def health_cmd(
    socket: SocketOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON document.")] = False,
    strict: Annotated[
        bool,
        typer.Option(help="Exit 3 on duplicates, a locked agent or a store that is not ok."),
    ] = False,
    timeout_ms: TimeoutOpt = 5000,
) -> None:
    """Identities, duplicate keys and (on secretivex) per-store and listener state."""
    from secretivex.client.errors import AgentFailure

    with _connect(socket, timeout_ms) as agent:
        path = agent.path
        identities = agent.list_identities()
        try:
            detail = agent.health()
        except AgentFailure:
            detail = None
    duplicates = _duplicates(identities)
    # The health document is the agent's word: take only the shapes we expect and
    # ignore the rest (a hostile or foreign agent may answer any JSON object).
    stores = _dicts((detail or {}).get("stores"))
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} key(s) listed more than once")
    if detail and detail.get("locked"):
        problems.append("the agent is locked")
    for store in stores:
        if store.get("state") != "ok":
            problems.append(f"store {store.get('name')} is {store.get('state')}")
        skipped_files = _mapping(store.get("detail")).get("skipped")
        for skipped in skipped_files if isinstance(skipped_files, list) else []:
            # An unreadable or missing key file is not an outage, but it is why a key
            # someone expects is not listed.
            problems.append(f"store {store.get('name')} skipped {skipped}")
    document = {
        "socket": path,
        "reachable": True,
        "identities": len(identities),
        "keys": [i.as_dict() for i in identities],
        "duplicates": duplicates,
        "store_detail": "available" if detail is not None else "unavailable",
        "agent": detail,
        "problems": problems,
    }
    if json_out:
        typer.echo(json.dumps(document, indent=2))
    else:
        _print_health(path, identities, duplicates, detail, stores, problems)
    if strict and problems:
        raise typer.Exit(EXIT_GUARDRAIL)


# -- wait-ready -----------------------------------------------------------------------


@app.command("wait-ready")
@cli_errors
def wait_ready_cmd(
    socket: SocketOpt = None,
    timeout_ms: Annotated[
        int, typer.Option("--timeout-ms", help="Give up after this long.")
    ] = 10000,
    interval_ms: Annotated[int, typer.Option(help="Pause between attempts.")] = 50,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Wait until the agent answers a key listing (exit 1 on timeout)."""
    from secretivex.client import AgentError, SyncAgentClient
    from secretivex.client.paths import resolve_socket_path

    path = str(resolve_socket_path(socket))
    start = time.monotonic()
    deadline = start + max(timeout_ms, 0) / 1000
    last = "not tried"
    while True:
        remaining = max(deadline - time.monotonic(), 0.05)
        try:
            with SyncAgentClient.connect(path, min(remaining, 2.0), min(remaining, 2.0)) as agent:
                count = len(agent.list_identities())
        except AgentError as exc:
            last = str(exc)
        else:
            if not quiet:
                waited = (time.monotonic() - start) * 1000
                typer.echo(f"ready: {path} ({count} identities) after {waited:.0f} ms")
            return
        if time.monotonic() >= deadline:
            fail(f"agent at {path} not ready after {timeout_ms} ms: {last}", EXIT_RUNTIME)
        time.sleep(max(interval_ms, 1) / 1000)


# -- metrics --------------------------------------------------------------------------


def _fmt_ns(value: Any) -> str:
    if value is None:
        return "-"
    value = int(value)
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} ms"
    if value >= 1_000:
        return f"{value / 1e3:.1f} us"
    return f"{value} ns"


@app.command("metrics")
@cli_errors
def metrics_cmd(
    file: Annotated[Path, typer.Argument(help="The agent's metrics snapshot (JSON).")],
    queue_wait_tail_ns: Annotated[
        int | None, typer.Option(help="Guardrail: tail threshold in ns.")
    ] = None,
    queue_wait_tail_max_ratio: Annotated[
        float | None, typer.Option(help="Guardrail: max share of requests above the tail.")
    ] = None,
    queue_wait_tail_profile: Annotated[
        str | None,
        typer.Option(help="Guardrail: the suggested one for balanced|fanout|pssh|low-memory."),
    ] = None,
    queue_wait_max_age_ms: Annotated[
        int | None, typer.Option(help="Fail when the snapshot is older than this.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON summary and verdict.")] = False,
) -> None:
    """Summarise a metrics snapshot; exit 3 when a guardrail fails or it is stale."""
    from secretivex.cli.bench_cmd import _guardrail
    from secretivex.metrics import evaluate_queue_wait, load_snapshot, snapshot_schema
    from secretivex.metrics.guardrails import snapshot_captured_ms

    guardrail = _guardrail(queue_wait_tail_ns, queue_wait_tail_max_ratio, queue_wait_tail_profile)
    if queue_wait_max_age_ms is not None and queue_wait_max_age_ms < 0:
        raise UsageError("--queue-wait-max-age-ms must not be negative")
    try:
        snapshot = load_snapshot(file)
    except FileNotFoundError:
        fail(f"metrics file {file} does not exist")
    except OSError as exc:
        fail(f"cannot read metrics file {file}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"malformed metrics snapshot: {exc}")
    meta = snapshot.get("meta")
    if not isinstance(meta, dict) or "schema_version" not in meta:
        fail(f"malformed metrics snapshot: {file} has no meta.schema_version")
    import jsonschema

    schema_problems = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in jsonschema.Draft202012Validator(snapshot_schema()).iter_errors(snapshot)
    ]
    result = evaluate_queue_wait(snapshot, guardrail, queue_wait_max_age_ms)
    captured = snapshot_captured_ms(snapshot)
    age_ms = int(time.time() * 1000) - captured if captured is not None else None
    raw_qw = snapshot.get("queue_wait")
    qw: dict[str, Any] = raw_qw if isinstance(raw_qw, dict) else {}
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "file": str(file),
                    "kind": meta.get("kind"),
                    "schema_version": meta.get("schema_version"),
                    "schema_problems": schema_problems,
                    "age_ms": age_ms,
                    "queue_wait": {
                        key: qw.get(key)
                        for key in ("count", "avg_ns", "max_ns", "percentiles_ns", "suggested")
                    },
                    "guardrail": result.as_dict(),
                },
                indent=2,
            )
        )
    else:
        _print_metrics(file, snapshot, meta, age_ms, qw, schema_problems)
        if guardrail is not None or queue_wait_max_age_ms is not None:
            if guardrail is not None and result.observed_ratio is not None:
                typer.echo(
                    f"guardrail: {result.observed_ratio:.2%} waited > {guardrail.tail_ns} ns "
                    f"(max {guardrail.max_ratio:.2%}, {guardrail.source}, {result.method})"
                )
            for problem in result.problems:
                typer.echo(f"FAIL {problem}")
            typer.echo("guardrail: PASS" if result.ok else "guardrail: FAIL")
    if not result.ok:
        raise typer.Exit(EXIT_GUARDRAIL)


def _print_metrics(
    file: Path,
    snapshot: dict[str, Any],
    meta: dict[str, Any],
    age_ms: int | None,
    qw: dict[str, Any],
    schema_problems: list[str],
) -> None:
    age = f"{age_ms} ms ago" if age_ms is not None else "at an unknown time"
    typer.echo(
        f"snapshot: {file} ({meta.get('kind')}, captured {age}, profile {meta.get('profile')}, "
        f"schema {meta.get('schema_version')})"
    )
    for problem in schema_problems[:5]:
        typer.echo(f"warning: schema: {problem}", err=True)
    conns = snapshot.get("connections") or {}
    if conns:
        typer.echo(
            f"connections: active {conns.get('active')} (max {conns.get('max_active')}), "
            f"opened {conns.get('opened')}, rejected {conns.get('rejected_total')}"
        )
    requests = snapshot.get("requests") or {}
    by_kind = requests.get("by_kind") or {}
    if by_kind:
        parts = []
        for kind, entry in sorted(by_kind.items()):
            outcomes = ", ".join(
                f"{k} {v}" for k, v in sorted((entry.get("outcomes") or {}).items())
            )
            parts.append(f"{kind} [{outcomes}]")
        typer.echo(f"requests: {requests.get('total')} ({'; '.join(parts)})")
    if qw:
        pct = qw.get("percentiles_ns") or {}
        typer.echo(
            f"queue wait: {qw.get('count')} waits, avg {_fmt_ns(qw.get('avg_ns'))}, "
            f"max {_fmt_ns(qw.get('max_ns'))}; "
            + ", ".join(f"{k} {_fmt_ns(v)}" for k, v in pct.items())
        )
        suggested = qw.get("suggested") or {}
        if suggested:
            typer.echo(
                f"suggested guardrail ({suggested.get('profile')}): "
                f"tail {_fmt_ns(suggested.get('tail_ns'))}, "
                f"max ratio {float(suggested.get('tail_max_ratio') or 0):.0%}"
            )
    confirm = snapshot.get("confirm") or {}
    if confirm.get("total"):
        outcomes = ", ".join(f"{k} {v}" for k, v in (confirm.get("outcomes") or {}).items() if v)
        typer.echo(f"confirm: {outcomes}")
    for store in snapshot.get("stores") or []:
        typer.echo(
            f"store {store.get('name')} ({store.get('kind')}): {store.get('state')}, "
            f"{store.get('keys')} keys"
        )
