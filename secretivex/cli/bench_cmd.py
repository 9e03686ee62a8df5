"""`secretivex bench` commands: run, schema, validate, check, trend, compare."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from secretivex.cli.exits import (
    EXIT_GUARDRAIL,
    EXIT_USAGE,
    UsageError,
    cli_errors,
    fail,
)

app = typer.Typer(
    help=(
        "Load-test an SSH agent (secretivex or any other) and judge the results.\n\n"
        "Exit codes: 0 ok, 1 runtime error, 2 usage error / invalid report, 3 gate failed."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration_ms(text: str) -> int:
    """``5`` / ``5s`` -> 5000, ``250ms`` -> 250, ``1m`` -> 60000."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: use e.g. 5, 5s, 250ms or 1m")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    factor = {"ms": 1, "s": 1000, "m": 60_000}[unit]
    return round(value * factor)


def _guardrail(tail_ns: int | None, ratio: float | None, profile: str | None) -> Any:
    from secretivex.metrics.guardrails import Guardrail, guardrail_for_profile

    if profile is not None and (tail_ns is not None or ratio is not None):
        raise UsageError(
            "use either --queue-wait-tail-profile or --queue-wait-tail-ns with "
            "--queue-wait-tail-max-ratio, not both"
        )
    if profile is not None:
        try:
            return guardrail_for_profile(profile)
        except KeyError:
            from secretivex.metrics.guardrails import GUARDRAIL_BASE

            raise UsageError(
                f"unknown profile {profile!r}: one of {', '.join(GUARDRAIL_BASE)}"
            ) from None
    if (tail_ns is None) != (ratio is None):
        raise UsageError("--queue-wait-tail-ns and --queue-wait-tail-max-ratio go together")
    if tail_ns is None or ratio is None:
        return None
    if tail_ns < 0 or not 0 <= ratio <= 1:
        raise UsageError("--queue-wait-tail-ns must be >= 0 and the ratio in [0, 1]")
    return Guardrail(tail_ns=tail_ns, max_ratio=ratio)


def _load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a bench report must be a JSON object")
    return data


def _write_atomic(path: Path, text: str) -> None:
    from secretivex.metrics.writer import write_snapshot_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_snapshot_atomic(path, text)


# -- run ----------------------------------------------------------------------------


@app.command("run")
@cli_errors
def run_cmd(
    socket: Annotated[
        str | None,
        typer.Option(help="Agent socket (default: $SSH_AUTH_SOCK, then the default path)."),
    ] = None,
    workload: Annotated[str, typer.Option(help="What each request does: sign or list.")] = "sign",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Workers (each one connection).")
    ] = 16,
    requests: Annotated[
        int | None,
        typer.Option("--requests", "-n", help="Measured requests per worker (default 100)."),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option("--duration", "-d", help="Run for a time instead: 10, 10s, 500ms, 1m."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(
            help="Unmeasured requests per worker first (default 0 with --duration, else 1)."
        ),
    ] = None,
    reconnect: Annotated[bool, typer.Option(help="A new connection for every request.")] = False,
    connect_retry: Annotated[
        bool,
        typer.Option(
            help="Retry connects refused because the agent's listen backlog is full (EAGAIN) "
            "politely, instead of counting each as a connect_eagain failure: measures a "
            "ceiling, not what clients see (labelled in the report)."
        ),
    ] = False,
    connect_timeout_ms: Annotated[
        int, typer.Option(help="Give up connecting after this long (counted as a connect failure).")
    ] = 5000,
    response_timeout_ms: Annotated[
        int, typer.Option(help="Give up waiting for an answer (counted as a timeout); 0 = never.")
    ] = 10000,
    worker_start_spread_ms: Annotated[
        int, typer.Option(help="Stagger worker starts evenly over this long.")
    ] = 0,
    payload_size: Annotated[int, typer.Option(help="Bytes of data per sign request.")] = 128,
    key: Annotated[
        str | None,
        typer.Option(help="Key to sign with: SHA256:<fp>, comment:<glob>, type:<alg>, a comment."),
    ] = None,
    flags: Annotated[
        str | None, typer.Option(help="Sign flags: rsa-sha2-256, rsa-sha2-512, ssh-rsa or N.")
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", "-p", help="Generator processes sharing the workers.")
    ] = 1,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="The agent's metrics snapshot: adds its queue-wait view of the run."),
    ] = None,
    metrics_wait_ms: Annotated[
        int, typer.Option(help="How long to wait for a snapshot newer than the run.")
    ] = 3000,
    queue_wait_tail_ns: Annotated[
        int | None, typer.Option(help="Queue-wait guardrail tail threshold (ns).")
    ] = None,
    queue_wait_tail_max_ratio: Annotated[
        float | None, typer.Option(help="Max share of requests above the tail threshold.")
    ] = None,
    queue_wait_tail_profile: Annotated[
        str | None, typer.Option(help="Use the suggested guardrail of a profile.")
    ] = None,
    max_samples: Annotated[
        int, typer.Option(help="Latency samples kept (reservoir-sampled beyond).")
    ] = 2_000_000,
    label: Annotated[str | None, typer.Option(help="Free text stored in meta.label.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print one CSV row.")] = False,
    csv_header: Annotated[bool, typer.Option(help="Header line with --csv.")] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the JSON report here.")
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            help="Show progress on stderr: a bar on a terminal, a plain line every 2 s "
            "otherwise (CI logs). Default: only when stderr is a terminal."
        ),
    ] = None,
) -> None:
    """Run a benchmark against an agent and report throughput, latency and failures."""
    from secretivex.bench.report import render_csv, render_text
    from secretivex.bench.runner import BenchOptions, parse_flags, run_bench
    from secretivex.client.paths import resolve_socket_path

    if json_out and csv_out:
        raise UsageError("--json and --csv are mutually exclusive")
    if workload not in ("sign", "list"):
        raise UsageError(f"--workload must be sign or list, not {workload!r}")
    try:
        flag_value = parse_flags(flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opts = BenchOptions(
        socket=str(resolve_socket_path(socket)),
        workload="list" if workload == "list" else "sign",
        concurrency=concurrency,
        requests=requests,
        duration_ms=parse_duration_ms(duration) if duration is not None else None,
        warmup=warmup,
        reconnect=reconnect,
        connect_retry=connect_retry,
        connect_timeout_ms=connect_timeout_ms,
        response_timeout_ms=response_timeout_ms,
        worker_start_spread_ms=worker_start_spread_ms,
        payload_size=payload_size,
        key=key,
        flags=flag_value,
        processes=processes,
        metrics_file=str(metrics_file) if metrics_file else None,
        metrics_wait_ms=metrics_wait_ms,
        guardrail=_guardrail(
            queue_wait_tail_ns, queue_wait_tail_max_ratio, queue_wait_tail_profile
        ),
        max_samples=max_samples,
        label=label,
    )
    try:
        opts.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    tty = sys.stderr.isatty()
    show = tty if progress is None else progress
    if not show:
        report = run_bench(opts)
    else:
        report = _run_with_progress(opts) if tty else _plain_progress(opts)
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        _write_atomic(out, text)
    if json_out:
        sys.stdout.write(text)
    elif csv_out:
        sys.stdout.write(render_csv(report, header=csv_header))
    else:
        typer.echo(render_text(report))


def _write_plots(
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    agents: tuple[str, str],
    directory: Path,
    fmt: str,
) -> list[Path]:
    from secretivex.bench.plots import PlotUnavailableError, plot_scenario

    written = []
    for scenario, by_agent in runs.items():
        chosen = {name: by_agent[name] for name in agents if name in by_agent}
        try:
            path = plot_scenario(scenario, chosen, directory, fmt=fmt)
        except PlotUnavailableError as exc:
            typer.echo(f"secretivex: plots skipped: {exc}", err=True)
            return []
        except OSError as exc:
            fail(f"cannot write plot in {directory}: {exc.strerror or exc}")
        if path is not None:
            written.append(path)
    return written


def _plain_progress(opts: Any) -> dict[str, Any]:
    """Progress for logs (stderr is not a terminal): a plain line every few seconds."""
    import time

    from secretivex.bench.runner import run_bench

    interval_s = 2.0
    started = time.monotonic()
    state = {"next": started + interval_s, "done": 0, "at": started}

    def hook(done: int, total: int | None, fraction: float) -> None:
        now = time.monotonic()
        if now < state["next"]:
            return
        rate = (done - state["done"]) / (now - state["at"]) if now > state["at"] else 0.0
        state.update(next=now + interval_s, done=done, at=now)
        where = f"{done:,}/{total:,} requests" if total else f"{done:,} requests, {fraction:.0%}"
        sys.stderr.write(f"bench: {where}, {rate:,.0f} req/s, {now - started:.1f}s elapsed\n")
        sys.stderr.flush()

    report = run_bench(opts, progress=hook)
    elapsed = time.monotonic() - started
    done = int((report.get("results") or {}).get("attempted") or state["done"])
    sys.stderr.write(f"bench: done, {done:,} requests in {elapsed:.1f}s\n")
    sys.stderr.flush()
    return report


def _run_with_progress(opts: Any) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from secretivex.bench.runner import run_bench

    console = Console(stderr=True)
    columns = [
        TextColumn("[bold]bench"),
        BarColumn(),
        MofNCompleteColumn()
        if opts.duration_ms is None
        else TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("run", total=None, rate="")
        state = {"last": 0, "t": 0.0}

        def hook(done: int, total: int | None, fraction: float) -> None:
            import time

            now = time.monotonic()
            rate = ""
            if state["t"]:
                elapsed = now - state["t"]
                if elapsed > 0:
                    rate = f"{(done - state['last']) / elapsed:,.0f} req/s"
            state["last"], state["t"] = done, now
            if total is not None:
                bar.update(task, total=total, completed=done, rate=rate)
            else:
                bar.update(task, total=100, completed=fraction * 100, rate=rate)

        return run_bench(opts, progress=hook)


@app.command("ceiling")
@cli_errors
def ceiling_cmd(
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 0.5,
    rounds: Annotated[int, typer.Option(help="Alternating rounds per algorithm.")] = 3,
    algorithms: Annotated[
        str | None, typer.Option(help="Comma-separated subset (ed25519,...,rsa-4096).")
    ] = None,
) -> None:
    """This machine's signing ceiling: in-process signatures/s per algorithm on one
    thread, on every CPU, and inline vs through the agent's signing pool."""
    from secretivex.bench.ceiling import ALGORITHMS, measure_ceiling, render_ceiling
    from secretivex.bench.report import host_info

    wanted = tuple(a.strip() for a in (algorithms or "").split(",") if a.strip()) or ALGORITHMS
    unknown = [a for a in wanted if a not in ALGORITHMS]
    if unknown:
        raise UsageError(f"unknown algorithm {unknown[0]!r}: use {', '.join(ALGORITHMS)}")
    if seconds <= 0 or rounds < 1:
        raise UsageError("--seconds must be positive and --rounds at least 1")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = measure_ceiling(wanted, seconds, rounds, progress=lambda m: typer.echo(m, err=True))
    typer.echo(render_ceiling(results, host_info()["cpus"], load))


@app.command("idle")
@cli_errors
def idle_cmd(
    socket: Annotated[str | None, typer.Option(help="Agent socket.")] = None,
    connections: Annotated[int, typer.Option(help="Connections to hold open.")] = 1000,
    hold: Annotated[str, typer.Option(help="How long to hold them: 5s, 500ms...")] = "5s",
    ready_file: Annotated[
        Path | None, typer.Option(help="Touch this file once every connection is open.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Result as JSON.")] = False,
) -> None:
    """Hold idle connections open (each served once) to measure per-connection memory.

    Exit 3 when not every connection could be opened or one was dropped while idle.
    """
    from secretivex.bench.idle import hold_idle_connections
    from secretivex.bench.runner import raise_fd_limit
    from secretivex.client.paths import resolve_socket_path

    if connections < 1:
        raise UsageError("--connections must be at least 1")
    raise_fd_limit(connections + 64)
    hold_ms = parse_duration_ms(hold)
    path = str(resolve_socket_path(socket))

    def touch() -> None:
        if ready_file is not None:
            ready_file.write_text("ready\n")

    result = hold_idle_connections(path, connections, hold_ms / 1000, on_ready=touch)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(
            f"idle: {result['opened']}/{result['requested']} connections opened in "
            f"{result['open_s']} s, held {result['hold_s']} s, "
            f"{result['still_open_after_hold']} still open"
        )
    if result["opened"] < connections or result["still_open_after_hold"] < result["opened"]:
        raise typer.Exit(EXIT_GUARDRAIL)


# -- schema / validate ----------------------------------------------------------------


@app.command("schema")
@cli_errors
def schema_cmd() -> None:
    """Print the JSON Schema of bench reports."""
    from secretivex.bench.report import report_schema

    typer.echo(json.dumps(report_schema(), indent=2))


@app.command("validate")
@cli_errors
def validate_cmd(
    files: Annotated[list[Path], typer.Argument(help="Bench reports (JSON) to check.")],
) -> None:
    """Strictly validate reports against the schema: prints OK, or one line per problem."""
    from secretivex.bench.report import validate_report

    bad = False
    for path in files:
        try:
            report = _load_report(path)
        except UsageError as exc:
            typer.echo(f"{exc}", err=True)
            bad = True
            continue
        problems = validate_report(report)
        for problem in problems:
            typer.echo(f"{path}: {problem}", err=True)
        bad = bad or bool(problems)
    if bad:
        raise typer.Exit(EXIT_USAGE)
    typer.echo("OK")


# -- check / trend / compare ----------------------------------------------------------


def _emit_verdict(verdict: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(verdict.as_dict(), indent=2))
    else:
        if verdict.diagnosis:
            typer.echo(verdict.diagnosis)
        for check in verdict.checks:
            typer.echo(check.line())
        typer.echo("gate: PASS" if verdict.ok else "gate: FAIL")
    if not verdict.ok:
        raise typer.Exit(EXIT_GUARDRAIL)


@app.command("check")
@cli_errors
def check_cmd(
    report_file: Annotated[Path, typer.Argument(help="A bench report (JSON).")],
    min_attempted: Annotated[int, typer.Option(help="Fail below this many attempts.")] = 1,
    min_rps: Annotated[float | None, typer.Option(help="Minimum successful requests/s.")] = None,
    max_p95_us: Annotated[float | None, typer.Option(help="Maximum p95 latency (us).")] = None,
    max_p99_us: Annotated[float | None, typer.Option(help="Maximum p99 latency (us).")] = None,
    max_failure_rate: Annotated[
        float | None, typer.Option(help="Maximum failed/attempted (0..1).")
    ] = None,
    max_worker_failures: Annotated[int, typer.Option(help="Maximum lost workers.")] = 0,
    require_queue_wait: Annotated[
        bool, typer.Option(help="Fail when the report has no agent queue-wait data.")
    ] = False,
    require_fresh_metrics: Annotated[
        bool, typer.Option(help="Fail when the metrics snapshot predates the end of the run.")
    ] = False,
    queue_wait_tail_ns: Annotated[int | None, typer.Option(help="Tail threshold (ns).")] = None,
    queue_wait_tail_max_ratio: Annotated[
        float | None, typer.Option(help="Max share above the tail.")
    ] = None,
    queue_wait_tail_profile: Annotated[
        str | None, typer.Option(help="Suggested guardrail of a profile.")
    ] = None,
    max_queue_wait_avg_ns: Annotated[int | None, typer.Option(help="Max average wait.")] = None,
    max_queue_wait_p99_ns: Annotated[int | None, typer.Option(help="Max p99 wait.")] = None,
    validate: Annotated[
        bool, typer.Option(help="Validate the report against the schema first.")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Verdict as JSON.")] = False,
) -> None:
    """Gate a report on SLO envelopes (exit 3 on a failed check).

    attempted=0 is reported first, as a setup/warmup/config problem.
    """
    from secretivex.bench.gates import Envelope, evaluate_envelope
    from secretivex.bench.report import validate_report

    report = _load_report(report_file)
    if validate:
        problems = validate_report(report)
        if problems:
            for problem in problems:
                typer.echo(f"{report_file}: {problem}", err=True)
            fail(f"{report_file} does not match the bench report schema", EXIT_USAGE)
    env = Envelope(
        min_attempted=min_attempted,
        min_rps=min_rps,
        max_p95_us=max_p95_us,
        max_p99_us=max_p99_us,
        max_failure_rate=max_failure_rate,
        max_worker_failures=max_worker_failures,
        require_queue_wait=require_queue_wait,
        require_fresh_metrics=require_fresh_metrics,
        queue_wait_guardrail=_guardrail(
            queue_wait_tail_ns, queue_wait_tail_max_ratio, queue_wait_tail_profile
        ),
        max_queue_wait_avg_ns=max_queue_wait_avg_ns,
        max_queue_wait_p99_ns=max_queue_wait_p99_ns,
    )
    _emit_verdict(evaluate_envelope(report, env), json_out)


@app.command("trend")
@cli_errors
def trend_cmd(
    current: Annotated[Path, typer.Argument(help="This run's report.")],
    previous: Annotated[
        Path | None, typer.Option(help="An earlier report to compare with (skipped if absent).")
    ] = None,
    budget: Annotated[float, typer.Option(help="Failure budget: max failure rate.")] = 0.01,
    max_increase: Annotated[
        float, typer.Option(help="Max rise of the failure rate vs the previous report.")
    ] = 0.005,
    json_out: Annotated[bool, typer.Option("--json", help="Verdict as JSON.")] = False,
) -> None:
    """Failure-budget trend: this report's failure rate vs a budget and a previous report."""
    from secretivex.bench.gates import evaluate_trend

    report = _load_report(current)
    before = _load_report(previous) if previous is not None and previous.exists() else None
    _emit_verdict(evaluate_trend(report, before, budget, max_increase), json_out)


def _parse_targets(text: str | None) -> dict[str, float]:
    targets: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            targets[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"bad --targets entry {part!r}: use scenario=ratio") from None
        if not sep:
            raise UsageError(f"bad --targets entry {part!r}: use scenario=ratio")
    return targets


@app.command("compare")
@cli_errors
def compare_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Directory of <scenario>__<agent>__<n>.json reports.")
    ],
    baseline: Annotated[str, typer.Option(help="Agent name of the reference.")] = "openssh",
    candidate: Annotated[str, typer.Option(help="Agent name being compared.")] = "secretivex",
    targets: Annotated[
        str | None, typer.Option(help="Minimum rps ratios, e.g. ed25519=5,ecdsa-p256=3.")
    ] = None,
    p99_targets: Annotated[
        str | None, typer.Option(help="Maximum p99 ratios, e.g. ed25519=0.2.")
    ] = None,
    enforce: Annotated[bool, typer.Option(help="Exit 3 when a target is missed.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Rows as JSON.")] = False,
    plot_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write <scenario>.latency.svg (latency percentiles of both agents) here; "
            "the Markdown links to them by file name, so save it in the same directory. "
            "Default: DIRECTORY (Markdown output only). Needs matplotlib "
            "(pip install 'secretivex[plot]'); without it the table is printed alone.",
        ),
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write the latency plots.")] = True,
    plot_format: Annotated[str, typer.Option(help="svg or png.")] = "svg",
) -> None:
    """Ratio table of median rps and p99 between two agents across scenarios, with a
    latency-distribution plot per scenario."""
    from secretivex.bench.gates import compare_runs, load_compare_dir, render_compare_markdown

    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    runs = load_compare_dir(directory)
    if not runs:
        fail(f"no <scenario>__<agent>__<n>.json reports in {directory}")
    if plot_format not in ("svg", "png"):
        raise UsageError(f"--plot-format must be svg or png, not {plot_format!r}")
    rows = compare_runs(
        runs, baseline, candidate, _parse_targets(targets), _parse_targets(p99_targets)
    )
    written: list[Path] = []
    if plots and (plot_dir is not None or not json_out):
        written = _write_plots(runs, (baseline, candidate), plot_dir or directory, plot_format)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        text = render_compare_markdown(rows, baseline, candidate)
        if written:
            text += "\n\n" + "\n".join(
                f"![{path.name.split('.latency.')[0]}: latency distribution]({path.name})"
                for path in written
            )
        typer.echo(text)
    if enforce and any(row["meets_target"] is False for row in rows):
        raise typer.Exit(EXIT_GUARDRAIL)
