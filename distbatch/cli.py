"""The `distbatch` command."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import strictjson
from .batcher import Batcher
from .clients import cluster_unreachable
from .config import parse_duration
from .errors import DistbatchError, EmitError, PayloadError
from .eviction import eviction_risk, warn_if_evicting


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """The Redis URL and namespace a command uses, kept where an error it ends in can find them
    (`_Commands` names the keys behind a WRONGTYPE, masks the passwords)."""
    ctx.meta[f"distbatch.{param.name}"] = value
    return value


_F = TypeVar("_F", bound=Callable[..., Any])


class _NoEmptyEnv(click.Option):
    """An option whose variable set empty is refused unless the option is given: click takes an
    empty one for unset, and an unset `${REDIS_URL}` in a compose file sent every process to the
    default, 127.0.0.1:6379, in silence (an empty DISTBATCH_QUEUE_URL put tickets on the main
    Redis). Every option of the CLI is one (`option`), its DISTBATCH_<COMMAND>_<OPTION> variable
    included; a flag's empty variable is off, as click reads it."""

    def _names(self, ctx: click.Context) -> list[str]:
        names = [self.envvar] if isinstance(self.envvar, str) else list(self.envvar or [])
        if self.allow_from_autoenv and ctx.auto_envvar_prefix is not None and self.name is not None:
            names.append(f"{ctx.auto_envvar_prefix}_{self.name.upper()}")
        return names

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        """A value from the environment that the option refuses is blamed on its variable: "Invalid
        value for '--lease'" named an option the operator never typed."""
        import os

        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if ctx.meta.get(f"distbatch.source.{self.name}") is click.core.ParameterSource.ENVIRONMENT:
                given = [n for n in self._names(ctx) if os.environ.get(n)]
                if given:
                    exc.param_hint = f"{given[0]}={os.environ[given[0]]!r} (the environment's {self.opts[0]})"
            raise

    def consume_value(self, ctx: click.Context, opts: Any) -> tuple[Any, Any]:
        import os

        value, source = super().consume_value(ctx, opts)
        ctx.meta[f"distbatch.source.{self.name}"] = source  # click sets its own after process_value
        names = self._names(ctx)
        empty = [n for n in names if os.environ.get(n) == ""]
        if empty and source is click.core.ParameterSource.DEFAULT and not self.is_flag:
            raise click.BadParameter(f"{empty[0]} is set but empty (an unset variable in a compose "
                                     "file?): give a value, or unset it for the default", ctx, self)
        return value, source


def option(*decls: str, **attrs: Any) -> Callable[[_F], _F]:
    """`click.option` for every option here: its variable set empty is refused (`_NoEmptyEnv`)."""
    return click.option(*decls, cls=_NoEmptyEnv, **attrs)


URL = option("--redis-url", envvar="DISTBATCH_REDIS_URL", default="redis://127.0.0.1:6379/0",
             callback=_remember, show_default=True,
             help="redis://, rediss:// (TLS), unix://, or redis+cluster:// / "
             "rediss+cluster:// (any node of a Redis Cluster) URL, with auth if needed. "
             "Env: DISTBATCH_REDIS_URL.")
QUEUE = option("--queue-url", envvar="DISTBATCH_QUEUE_URL", default=None, callback=_remember,
               help="A standalone Redis for the RQ queue, if not the same one (required with a "
               "redis+cluster:// --redis-url: RQ cannot live on a cluster). Env: DISTBATCH_QUEUE_URL.")
MAX_CONNECTIONS = 1000
"""`serve`'s connections and requests at once: 503 above (each holds up to a head's 64 KiB, or
`--max-body-bytes` of body, in memory)."""
NS = option("--namespace", envvar="DISTBATCH_NAMESPACE", default="distbatch", show_default=True,
            callback=_remember,
            help="Key namespace. Env: DISTBATCH_NAMESPACE.")
SHARDS = option("--shards", envvar="DISTBATCH_SHARDS", type=click.IntRange(1, 16384), default=None,
                help="Shards of a namespace this process may be the first to use (as the apps' "
                "`shards=`; default 1 on one Redis, a cluster's masters); once fixed, another "
                "number is refused. Env: DISTBATCH_SHARDS.")


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_duration(value, (param.opts or ["duration"])[0])
    except DistbatchError as exc:
        raise click.BadParameter(str(exc)) from exc


def _lease(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A lease is renewed every third of it: below a second one pause of the process (a full
    collection, a busy machine) loses healthy batches; above a day a killed worker's batches
    wait that long."""
    ms = _duration(ctx, param, value)
    if not 1000 <= ms <= 86_400_000:
        raise click.BadParameter(f"--lease={value!r} must be from 1s to 1d")
    return ms


_TLS_MISTAKES = ("certificate verify failed", "KEY_VALUES_MISMATCH", "bad decrypt", "BAD_DECRYPT",
                 "certificate required", "PEM lib", "NO_START_LINE", "unknown ca", "bad certificate")
"""What an SSL error says when this side's TLS setup is wrong (no outage a wait mends): the
server's certificate untrusted, a key that is not the certificate's, a wrong key passphrase, no
client certificate where the server asks for one, a file that holds no PEM."""


def _masked(text: str, *urls: str | None) -> str:
    """`text` with the passwords of `urls` masked: redis-py's errors quote hosts, and a host may
    be made of a piece of a password (`redacted`)."""
    from .clients import redacted

    for url in urls:
        if url:
            text = redacted(url, text)
    return text


def _untrusted(exc: BaseException) -> bool:
    """A TLS mistake of this side (`_TLS_MISTAKES`), not an outage: workers and sweepers retried it
    for ever, one `redis_unavailable` line a retry (redis-py keeps the SSL error as the context
    of its ConnectionError)."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and any(m in str(seen) for m in _TLS_MISTAKES):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(m in str(exc) for m in _TLS_MISTAKES)


def _patient_batcher(redis_url: str, namespace: str, queue_url: str | None,
                     stop: threading.Event | None = None, shards: int | None = None) -> Batcher | None:
    """For long-running processes: Redis down at start costs one line per retry, not an exit; a
    wrong password or an ACL refusal is no outage to wait out, but a mistake: one clear error.
    None when `stop` was set while waiting (SIGTERM must end a process Redis keeps waiting)."""
    import redis

    backoff = 0.5
    while True:
        try:
            batcher = Batcher.from_url(redis_url, namespace=namespace, queue_url=queue_url, shards=shards)
            if batcher.dispatcher is not None and batcher.dispatcher.client is not batcher.client:
                try:  # checked here, so a mistake in it is named as its own
                    batcher.dispatcher.client.ping()
                except redis.RedisError as exc:
                    exc.args = (f"--queue-url: {exc}",)
                    raise
            empty = _no_binding(batcher)
            if empty:  # workers may start first, so a word, not an error
                logging.getLogger("distbatch").warning(
                    "namespace_empty namespace=%s: %s", namespace, empty,
                    extra={"event": "namespace_empty", "namespace": namespace})
            warn_if_evicting(batcher.client)
            if batcher.dispatcher is not None and batcher.dispatcher.client is not batcher.client:
                warn_if_evicting(batcher.dispatcher.client, "--queue-url")  # RQ's tickets and jobs
            return batcher
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError):
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
            if _untrusted(exc) or not (isinstance(exc, redis.RedisError) or cluster_unreachable(exc)):
                raise  # a certificate this machine does not trust, a node of no cluster: no outage
            logging.getLogger("distbatch").warning("redis_unavailable: %s; retrying in %.1fs",
                                                   _masked(str(exc), redis_url, queue_url), backoff)
            if (stop or threading.Event()).wait(backoff):
                return None
            backoff = min(10.0, backoff * 2)


def _look(redis_url: str, namespace: str, queue_url: str | None = None, handoff: bool = False) -> Batcher:
    """A batcher for a command that stores no layout (on a typo'd --namespace `dead purge --all`
    and the like wrote one); on a namespace with no binding, a word on stderr: empty output there
    looked just like "nothing dead", "nothing ready"."""
    batcher = Batcher.from_url(redis_url, namespace=namespace, queue_url=queue_url, handoff=handoff,
                               fix_layout=False)
    empty = _no_binding(batcher)
    if empty:
        click.echo(f"namespace {namespace!r}: {empty}", err=True)
    risk = eviction_risk(batcher.client)
    if risk:
        click.echo(f"warning: {risk}", err=True)
    return batcher


def _no_binding(batcher: Batcher) -> str | None:
    """Why a namespace with no binding registered may be a typo'd --namespace, or None when it
    has one. A namespace whose bindings were all dropped is no typo: its dead batches are still
    listed and replayed (under the dropped definitions), and were told "a typo'd --namespace?"."""
    if batcher.bindings():
        return None
    dropped = batcher.client.hlen(batcher.keys.dropped)
    if dropped:
        return (f"no binding is registered now ({dropped} dropped; their batches are still run, "
                "listed and replayed)")
    return ("no binding is registered in it (a typo'd --namespace? DISTBATCH_NAMESPACE sets it for "
            "every command; `distbatch triggers list` shows a namespace's bindings)")


def _check_tls(cert: str | None, key: str | None, host: str) -> None:
    """Both or neither, and a pair that loads (one `Error:` line, not uvicorn's traceback at
    start); off a loopback address without TLS, a word: tokens and events go in clear."""
    import ipaddress
    import ssl

    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both, or neither")
    if cert is not None and key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise click.ClickException(f"--tls-cert={cert!r} --tls-key={key!r}: {exc}") from exc
        return
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host.lower().rstrip(".") == "localhost"
    if not local:
        logging.getLogger("distbatch.serve").warning(
            "serve_plaintext host=%s: bearer tokens and events travel in clear; give --tls-cert and "
            "--tls-key, or put a TLS proxy in front", host, extra={"event": "serve_plaintext"})


def _mistake_or_away(redis_url: str, namespace: str, queue_url: str | None) -> None:
    """`serve` starts with Redis away (/healthz says so and requests get 503 until it is back),
    but not on a mistake no wait mends: a wrong password, an ACL refusal, a certificate this
    machine does not trust, a database the server lacks — one `Error:` line, as `_patient_batcher`."""
    import redis

    for url, field in ((redis_url, None), (queue_url, "--queue-url")):
        if url is None:
            continue
        try:  # the queue's Redis too: a wrong password there started serve, its hand-offs failing
            if field is None:
                look = Batcher.from_url(url, namespace=namespace, queue_url=queue_url, handoff=False)
                look.bindings()
                warn_if_evicting(look.client)
            else:
                from .clients import connect

                queue = connect(url, "queue_url")
                queue.ping()
                warn_if_evicting(queue, "--queue-url")  # RQ's tickets and jobs
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.ResponseError) as exc:
            if field:
                exc.args = (f"{field}: {exc}",)
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if _untrusted(exc):
                if field:
                    exc.args = (f"{field}: {exc}",)
                raise
        except redis.exceptions.RedisClusterException as exc:
            if not cluster_unreachable(exc):
                raise


def metrics_options(f: Any) -> Any:
    """--metrics-port and its auth, shared by worker and sweeper."""
    for add in reversed([
        option("--metrics-port", type=click.IntRange(1, 65535), default=None,
               help="Serve this process's Prometheus metrics on this port (/metrics)."),
        option("--metrics-host", default="127.0.0.1", show_default=True,
               help="Address of the metrics port."),
        option("--token-file", type=click.Path(dir_okay=False), default=None,
               help="API tokens for the metrics port, one per line (also DISTBATCH_API_TOKENS)."),
        option("--metrics-insecure-no-auth", is_flag=True,
               help="Metrics without auth: refused unless --metrics-host is a loopback address."),
    ]):
        f = add(f)
    return f


def _start_metrics(port: int | None, host: str, token_file: str | None, insecure: bool) -> None:
    if port is None:
        given = [f for f, v in (("--metrics-insecure-no-auth", insecure), ("--token-file", token_file))
                 if v]  # options of a metrics port that none serves: taken in silence before
        if given:
            raise click.UsageError(f"{' and '.join(given)}: an option of --metrics-port, which is not given")
        return
    from .exposure import check_exposure, read_tokens
    from .metrics import serve_process_metrics

    try:
        tokens = read_tokens(token_file=token_file)
        check_exposure("--metrics-port", host, tokens, insecure, "--metrics-insecure-no-auth")
    except DistbatchError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        serve_process_metrics(host, port, tokens)
    except OSError as exc:  # the port taken, an address not on this machine
        raise click.ClickException(f"--metrics-port {port} on --metrics-host {host}: {exc}") from exc
    logging.getLogger("distbatch").info("metrics_listening http://%s:%d/metrics auth=%s", host, port,
                                        "bearer" if tokens else "none (loopback)")


def _echo_json(data: Any) -> None:
    click.echo(strictjson.dumps(data, indent=2, default=str))


class _FiniteFloat(click.FloatRange):
    """click's FloatRange lets NaN through (it fails every comparison, so no bound refuses it),
    and infinity past an open upper bound: a rate must be a number a sleep can take."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class _Commands(click.Group):
    """Every command's expected failures (bad config or payload, an unparseable URL, Redis out of
    reach) end in one `Error: ...` line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except click.ClickException as exc:  # no password in any of them, whatever quoted it
            masked = _masked(exc.message, ctx.meta.get("distbatch.redis_url"),
                             ctx.meta.get("distbatch.queue_url"))
            if masked == exc.message:
                raise
            if isinstance(exc, click.UsageError):  # its exit status (2) and usage line kept
                raise click.UsageError(masked, exc.ctx) from exc
            raise click.ClickException(masked) from exc

    def _invoke(self, ctx: click.Context) -> Any:
        import redis

        from .errors import describe

        try:
            return super().invoke(ctx)
        except DistbatchError as exc:
            raise click.ClickException(str(exc)) from exc
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            said = str(exc)  # no AUTH sent: redis-py 7+ sends HELLO first, older ones the command
            if "HELLO must be called" in said or said.startswith(("Authentication required", "NOAUTH")):
                raise click.ClickException(
                    "Redis requires a password, and the URL gives none (redis://[user]:PASSWORD@host"
                    ":port/db; percent-encode what a URL cannot hold)") from exc
            raise click.ClickException(f"Redis refused the login (the user or password in the URL): "
                                       f"{describe(exc)}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            urls = (ctx.meta.get("distbatch.redis_url"), ctx.meta.get("distbatch.queue_url"))
            tls = any(isinstance(u, str) and u.startswith("rediss") for u in urls)
            hint = (" (a rediss:// URL to a port that does not speak TLS times out so: is that "
                    "server's port a TLS one?)" if tls and isinstance(exc, redis.TimeoutError) else "")
            raise click.ClickException(f"cannot reach Redis: {describe(exc)}{hint}") from exc
        except redis.exceptions.RedisClusterException as exc:  # no node reachable, or not a cluster
            raise click.ClickException(f"cannot use the Redis Cluster: {describe(exc)}") from exc
        except redis.ResponseError as exc:  # e.g. a database index the server does not have
            hint = (": the database a URL names (its /N path) is not one that server has (its "
                    "`databases` setting)" if "DB index is out of range" in str(exc) else "")
            if "WRONGTYPE" in str(exc):  # alone, or a pipeline's "Command # 2 (...) caused error: ..."
                hint = _misfiled_hint(ctx, exc)
            elif isinstance(exc, redis.exceptions.NoPermissionError):  # RQ's on --queue-url named neither
                queue = (" or --queue-url's (RQ's keys are there)" if ctx.meta.get("distbatch.queue_url")
                         else "")
                hint = (f": the ACL user of --redis-url{queue} lacks it (README, 'ACL users': what each "
                        "process needs)")
            raise click.ClickException(f"Redis refused: {describe(exc)}{hint}") from exc
        except redis.RedisError as exc:  # e.g. a URL naming something that speaks no RESP
            raise click.ClickException(f"Redis failed: {describe(exc)}") from exc


def _misfiled_hint(ctx: click.Context, exc: BaseException) -> str:
    """Which of the namespace's keys hold a type distbatch does not keep there (a hostile
    writer's, an operator's `SET` on the wrong key): a bare WRONGTYPE named none of them."""
    import redis

    from .clients import connect
    from .keys import Keys
    from .records import Records
    from .shards import Layout

    url, namespace = ctx.meta.get("distbatch.redis_url"), ctx.meta.get("distbatch.namespace")
    if not url or not namespace:
        return ""
    try:
        client = connect(url)
        try:
            layout = Layout.load(client, namespace, None, fix=False)
        except redis.ResponseError:  # its layout key is one of them: look at the first shard
            layout = Layout(namespace, (Keys(namespace).tag,))
        return Records(client, layout).misfiled_hint(exc)
    except (redis.RedisError, DistbatchError):
        return ""


@click.group(cls=_Commands, context_settings={"auto_envvar_prefix": "DISTBATCH", "show_default": True})
@click.version_option(package_name="distbatch", message="%(prog)s %(version)s")
@option("-v", "--verbose", count=True, help="More logging (-v debug for distbatch, -vv for RQ too).")
@option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """distbatch: batch events across processes and machines on Redis.

    Every option can also come from the environment: DISTBATCH_<COMMAND>_<OPTION> (e.g.
    DISTBATCH_WORKER_HANDLERS), and DISTBATCH_REDIS_URL / DISTBATCH_NAMESPACE for all commands.
    """
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ours = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("distbatch").setLevel(ours)


@main.command()
@URL
@NS
@option("--handlers", envvar=["DISTBATCH_HANDLERS", "DISTBATCH_WORKER_HANDLERS"], default="",
        show_default=True,
        help="Comma-separated module prefixes whose handlers this worker may run "
        "(e.g. myapp.handlers). Env: DISTBATCH_HANDLERS.")
@option("--lease", default="10s", show_default=True, callback=_lease,
        help="How long a batch stays with a worker that stops renewing it (killed); 1s to 1d.")
@option("--with-sweeper", is_flag=True, help="Also run a sweeper in this process.")
@option("--burst", is_flag=True, help="Exit when the queue is empty.")
@option("--name", default=None, help="Worker name (RQ).")
@option("--path", "paths", envvar="DISTBATCH_WORKER_PATH", multiple=True, default=["."],
        type=click.Path(exists=True, file_okay=False),
        help="Directories put first on sys.path so handlers import (like `rq worker --path`). "
        "Env: DISTBATCH_WORKER_PATH, os.pathsep-separated.")
@QUEUE
@option("--summary-every", default="60s", callback=_duration, help="Period of the summary line.")
@SHARDS
@metrics_options
def worker(redis_url: str, namespace: str, handlers: str, lease: int, with_sweeper: bool,
           burst: bool, name: str | None, paths: tuple[str, ...], queue_url: str | None,
           summary_every: int, shards: int | None, metrics_port: int | None, metrics_host: str,
           token_file: str | None, metrics_insecure_no_auth: bool) -> None:
    """Run batches: an RQ worker on the namespace's queue. SIGTERM finishes the batch in hand."""
    import os

    from .interrupts import stop_then_exit, taken_by_thread
    from .worker import run_worker

    for path in reversed(paths):
        sys.path.insert(0, os.path.abspath(path))
    stop = threading.Event()
    # Until RQ's worker installs its own handlers, a signal (Redis away at start) is a clean stop,
    # as the sweeper's: taken by a thread, with the mask set before the metrics thread starts.
    with taken_by_thread(stop_then_exit(stop, "the worker")):
        _start_metrics(metrics_port, metrics_host, token_file, metrics_insecure_no_auth)
        batcher = _patient_batcher(redis_url, namespace, queue_url, stop, shards)
    if batcher is None or stop.is_set():
        return
    run_worker(batcher, handlers=handlers.split(","), lease_ms=lease, with_sweeper=with_sweeper,
               burst=burst, name=name, logging_level="WARNING", summary_every_s=summary_every / 1000)


@main.command()
@URL
@NS
@option("--max-sleep", default="1s", show_default=True, callback=_duration,
        help="Longest idle sleep between checks for orphans and expired leases; at most 1s "
        "(a sweeper renews its shards' leases every second, so a longer sleep is cut to it).")
@QUEUE
@option("--summary-every", default="60s", callback=_duration, help="Period of the summary line.")
@SHARDS
@metrics_options
def sweeper(redis_url: str, namespace: str, max_sleep: int, queue_url: str | None,
            summary_every: int, shards: int | None, metrics_port: int | None, metrics_host: str,
            token_file: str | None, metrics_insecure_no_auth: bool) -> None:
    """Cut expired windows on time, hand off orphaned batches, reclaim dead workers' batches."""
    import threading

    from .interrupts import stop_then_exit, taken_by_thread
    from .sweeper import Sweeper

    stop = threading.Event()
    # by a thread, not a handler: `stop.set()` inside the main thread's own `stop.wait` would
    # wait for the lock that wait holds; a second signal exits at once (a Redis that hangs
    # makes each step of a stop wait out the socket timeout)
    with taken_by_thread(stop_then_exit(stop, "the sweeper")):
        _start_metrics(metrics_port, metrics_host, token_file, metrics_insecure_no_auth)
        batcher = _patient_batcher(redis_url, namespace, queue_url, stop, shards)
        if batcher is not None:
            Sweeper(batcher, max_sleep_s=max_sleep / 1000,
                    summary_every_s=summary_every / 1000).run(stop)


@main.command()
@URL
@NS
@QUEUE
@option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
        help="Port to listen on.")
@option("--token-file", type=click.Path(dir_okay=False), default=None,
        help="File of API tokens, one per line (# comments, first on a line or after a space). "
        "Tokens also come from DISTBATCH_API_TOKENS (comma-separated).")
@option("--insecure-no-auth", is_flag=True,
        help="Serve without auth: refused unless --host is a loopback address.")
@option("--max-body-bytes", default=8 << 20, show_default=True, type=click.IntRange(min=1),
        help="Largest request body (413 above).")
@option("--max-events", default=10_000, show_default=True, type=click.IntRange(min=1),
        help="Most events per request (413 above).")
@option("--max-event-bytes", default=1 << 20, show_default=True, type=click.IntRange(min=1),
        help="Largest event, msgpack-encoded (413 above).")
@option("--body-timeout", default="30s", show_default=True, callback=_duration,
        help="Longest a request's body may take to arrive (408 above).")
@option("--header-timeout", default="10s", show_default=True, callback=_duration,
        help="Longest a request's line and headers may take to arrive, and a new connection "
        "its first request (408 above; a head above 64 KiB is a 431).")
@option("--idempotency-keep", default="1d", show_default=True, callback=_duration,
        help="How long a response is kept for retries sent with its Idempotency-Key (a retry "
        "after it stores its events again); each costs Redis ~0.3-0.7 KB that long.")
@option("--shutdown-grace", default="10s", show_default=True, callback=_duration,
        help="On SIGTERM, how long requests in flight may take before they are cut.")
@option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
        help="Serve HTTPS with this certificate (PEM, its chain after it); with --tls-key.")
@option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
        help="The private key of --tls-cert (PEM).")
def serve(redis_url: str, namespace: str, queue_url: str | None, host: str, port: int,
          token_file: str | None, insecure_no_auth: bool, max_body_bytes: int, max_events: int,
          max_event_bytes: int, body_timeout: int, header_timeout: int, idempotency_keep: int,
          shutdown_grace: int, tls_cert: str | None, tls_key: str | None) -> None:
    """HTTP ingest: POST /v1/sources/<source>/events (JSON or NDJSON), GET /healthz, /openapi.json."""
    try:
        import uvicorn

        from .serve import ServeSettings, create_app, read_tokens
    except ImportError as exc:
        raise click.ClickException(
            f"distbatch serve needs its extra: pip install 'distbatch[serve]' ({exc})") from exc
    try:
        settings = ServeSettings(
            redis_url=redis_url, namespace=namespace, queue_url=queue_url, host=host, port=port,
            tokens=read_tokens(token_file=token_file), insecure_no_auth=insecure_no_auth,
            max_body_bytes=max_body_bytes, max_events=max_events, max_event_bytes=max_event_bytes,
            body_timeout_ms=body_timeout, idempotency_keep_ms=idempotency_keep)
    except DistbatchError as exc:
        raise click.ClickException(str(exc)) from exc
    _check_tls(tls_cert, tls_key, host)
    _mistake_or_away(redis_url, namespace, queue_url)
    from .serve.head_guard import guarded

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                            access_log=False, proxy_headers=False, server_header=False,
                            http=guarded(header_timeout / 1000, body_timeout / 1000, MAX_CONNECTIONS),
                            timeout_graceful_shutdown=math.ceil(shutdown_grace / 1000),
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    try:  # bound here, not by uvicorn: a port taken is one `Error:` line, as for --metrics-port
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        listener = socket.create_server((host, port), family=family)
    except OSError as exc:  # the port taken, an address not on this machine
        raise click.ClickException(f"--port {port} on --host {host}: {exc}") from exc
    import contextlib
    import signal

    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again: Ctrl-C then
    # read as click's "Aborted!" and exit status 1 (a mistake's), SIGTERM as death by signal.
    # A stop that went as asked exits 0, as a worker's and a sweeper's do.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        if tls_cert is None:
            server.run(sockets=[listener])
        else:  # uvicorn would leave the TLS handshake unbounded (60 s): bound it as a head
            from .serve.tls_loop import bounded_handshake_loop

            with asyncio.Runner(loop_factory=bounded_handshake_loop(header_timeout / 1000)) as runner:
                runner.run(server.serve(sockets=[listener]))


@main.command()
@URL
@NS
@click.argument("source")
@click.argument("payload", required=False)
@option("--chunk", default=1000, show_default=True, type=click.IntRange(1, 100_000),
        help="Events per round trip from stdin.")
@QUEUE
def emit(redis_url: str, namespace: str, source: str, payload: str | None, chunk: int,
         queue_url: str | None) -> None:
    """Emit PAYLOAD (a JSON object) to SOURCE, or JSON lines from stdin when PAYLOAD is omitted."""
    if payload is not None and not payload.strip():  # a blank line of stdin is skipped; this is no line
        raise click.ClickException("PAYLOAD is empty: give a JSON object, or leave it out to read JSON "
                                   "lines from stdin")
    batcher = Batcher.from_url(redis_url, namespace=namespace, queue_url=queue_url, fix_layout=False)
    if not batcher.bindings() or not any(b.source == source for b in batcher.bindings().values()):
        raise click.ClickException(
            f"no trigger is bound to source {source!r} in namespace {namespace!r}; nothing would be "
            f"stored (bound sources: {sorted({b.source for b in batcher.bindings().values()})})"
        )
    lines = [payload] if payload is not None else sys.stdin
    if payload is None and sys.stdin.isatty():  # it would wait in silence for lines typed
        click.echo(f"reading events for {source!r} from stdin, one JSON object per line; end with "
                   "Ctrl-D (or give PAYLOAD)", err=True)
    buffered = fired = n = 0
    events: list[Any] = []
    numbers: list[int] = []  # the line of each event waiting in `events`

    def stopped(lineno: int, why: str) -> click.ClickException:
        """Lines go in chunks as they are read: say exactly what is in Redis when one fails."""
        if payload is not None:  # no lines: the argument
            return click.ClickException(f"PAYLOAD: {why}; nothing was stored")
        first = numbers[0] if numbers else lineno  # the first line of the chunk not sent
        return click.ClickException(
            f"line {lineno}: {why}; nothing from line {first} on was stored"
            + (f" (the {n} event(s) of the lines before it were)" if n else ""))

    sending = False  # a chunk is on its way: interrupted now, it may or may not be stored

    def send() -> None:
        nonlocal buffered, fired, n, sending
        sending = True
        try:
            results = batcher.emit_many(source, events)
        except PayloadError as exc:  # emit_many checks every payload first: this chunk stored nothing
            raise stopped(numbers[exc.event or 0], exc.reason) from exc
        except EmitError as exc:
            if payload is not None:  # no lines: the error says what of the one event is stored
                raise click.ClickException(f"PAYLOAD: {exc}") from exc
            raise click.ClickException(
                f"{exc}; the chunk began at line {numbers[0]}, and the {n} event(s) before it were "
                "stored") from exc
        if events and not results:  # every binding of the source was dropped meanwhile
            raise stopped(numbers[0], f"no trigger is bound to source {source!r} any more (dropped "
                          "while the lines were read?)")
        for r in results:  # a full buffer cut, and an expired one this event closed (unless discarded)
            fired += (r.batch is not None) + (r.expired is not None and not r.expired.discarded)
            buffered += r.batch is None
        n += len(events)
        events.clear()
        numbers.clear()
        sending = False

    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(strictjson.loads(line))
            except (ValueError, RecursionError) as exc:
                raise stopped(lineno, f"not JSON ({exc}): {line[:80]!r}") from exc
            numbers.append(lineno)
            if len(events) >= chunk:
                send()
        if events:
            send()
    except KeyboardInterrupt:  # Ctrl-C: say what is in Redis (click's own word is "Aborted!")
        rest = (f"; the chunk from line {numbers[0]} was being sent: it may or may not be stored"
                if sending else f"; nothing from line {numbers[0]} on was" if numbers else "")
        click.echo(f"interrupted: the {n} event(s) before it were stored{rest}", err=True)
        click.echo(json.dumps({"events": n, "results_buffered": buffered, "batches_fired": fired,
                               "interrupted": True}))
        sys.exit(130)
    click.echo(json.dumps({"events": n, "results_buffered": buffered, "batches_fired": fired}))


@main.command()
@URL
@NS
@option("--json", "as_json", envvar="DISTBATCH_STATS_JSON", is_flag=True,
        help="Machine-readable JSON (times in ms); with --watch, one JSON line per refresh.")
@option("--watch", is_flag=True, help="Live view: rates, open buffers, ready/running/dead, "
        "cut lateness; Ctrl-C ends it.")
@option("--interval", default="2s", callback=_duration, help="Refresh period of --watch.")
@option("--count", type=click.IntRange(min=1), default=None,
        help="With --watch: stop after this many refreshes.")
@option("--events", is_flag=True,
        help="Also count the events in every open buffer and batch record, and check each "
        "binding's books (unaccounted = in - left - inside; 0 at rest). Reads them all.")
def stats(redis_url: str, namespace: str, as_json: bool, watch: bool, interval: int,
          count: int | None, events: bool) -> None:
    """Batches ready/running/waiting/dead now; per binding: open buffers, next window to close,
    events in/delivered/discarded and batches cut (totals since the namespace began)."""
    from .stats import collect, render

    if count is not None and not watch:
        raise click.UsageError("--count counts --watch's refreshes: use it with --watch")
    source = click.get_current_context().get_parameter_source("interval")
    if not watch and source not in (None, click.core.ParameterSource.DEFAULT):
        raise click.UsageError("--interval is --watch's refresh period: use it with --watch")
    if events and watch:
        raise click.UsageError("--events reads every buffer and record: use it without --watch")
    batcher = _look(redis_url, namespace)
    if watch:
        import contextlib

        from .watch import watch as live

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            live(batcher, interval / 1000, count, as_json, click.echo)
        return
    data = collect(batcher, events=events)
    if as_json:
        _echo_json(data)
    else:
        click.echo(render(data))


@main.group()
def triggers() -> None:
    """Inspect trigger bindings."""


@triggers.command("list")
@URL
@NS
def triggers_list(redis_url: str, namespace: str) -> None:
    """Every registered binding with its source, handler and batch config."""
    batcher = _look(redis_url, namespace)
    _echo_json({k: b.to_dict() for k, b in batcher.bindings().items()})


@main.group()
def dead() -> None:
    """Batches whose handler failed on every attempt."""


@dead.command("list")
@URL
@NS
def dead_list(redis_url: str, namespace: str) -> None:
    """Dead batches, one JSON object a line (JSON lines): binding, size and the last line of the
    error (`dead show ID` for the whole traceback)."""
    from . import dead

    batcher = _look(redis_url, namespace)
    for row in reversed(dead.rows(batcher)):  # oldest first, as a log reads
        error = (row.pop("error") or "").strip().splitlines()
        # one line each: indented objects back to back were neither one JSON document nor lines
        click.echo(strictjson.dumps({**row, "error": error[-1] if error else None}, default=str))


@dead.command("show")
@URL
@NS
@click.argument("batch_id")
def dead_show(redis_url: str, namespace: str, batch_id: str) -> None:
    """One dead batch in full: record, whole traceback, events (or why they cannot be decoded)."""
    from . import dead

    batcher = _look(redis_url, namespace)
    row = dead.detail(batcher, batch_id)
    if row is None:
        raise click.ClickException(f"batch {batch_id!r} is {dead.whereabouts(batcher, batch_id)}")
    _echo_json(row)


def _dead_ids(batcher: Batcher, batch_ids: tuple[str, ...], every: bool) -> tuple[str, ...]:
    from . import dead

    if every and batch_ids:  # which did they mean? a typo'd id must not pass unseen
        raise click.UsageError(f"name batch ids or pass --all, not both (ids given: {' '.join(batch_ids)})")
    if every:  # nothing dead is a fine answer to --all, not a usage error
        return tuple(dead.ids(batcher))
    if not batch_ids:
        raise click.UsageError("name batch ids or pass --all")
    return tuple(dict.fromkeys(batch_ids))  # a batch named twice is one batch


@dead.command("replay")
@URL
@NS
@click.argument("batch_ids", nargs=-1)
@option("--all", "replay_all", envvar="DISTBATCH_DEAD_REPLAY_ALL", is_flag=True,
        help="Replay every dead batch.")
@QUEUE
def dead_replay(redis_url: str, namespace: str, batch_ids: tuple[str, ...], replay_all: bool,
                queue_url: str | None) -> None:
    """Run dead batches again, with fresh attempts."""
    from .dead import whereabouts

    batcher = _look(redis_url, namespace, queue_url, handoff=True)
    replayed = []
    for bid in _dead_ids(batcher, batch_ids, replay_all):
        ok = batcher.records.replay(bid)
        replayed += [bid] if ok else []
        click.echo(f"{bid}: {'replayed' if ok else whereabouts(batcher, bid)}")
    if replayed and batcher.dispatcher is not None:
        batcher.dispatcher(replayed)
    missed = len(set(batch_ids)) - len(replayed) if not replay_all else 0
    if missed:
        raise click.ClickException(f"{missed} of the batches named are not dead (see `distbatch dead list`)")


@dead.command("purge")
@URL
@NS
@click.argument("batch_ids", nargs=-1)
@option("--all", "purge_all", envvar="DISTBATCH_DEAD_PURGE_ALL", is_flag=True,
        help="Purge every dead batch.")
def dead_purge(redis_url: str, namespace: str, batch_ids: tuple[str, ...], purge_all: bool) -> None:
    """Delete dead batches for good (their events are gone)."""
    batcher = _look(redis_url, namespace)
    purged = sum(batcher.records.purge(bid) for bid in _dead_ids(batcher, batch_ids, purge_all))
    click.echo(f"purged {purged} dead batches")
    if not purge_all and purged < len(set(batch_ids)):
        raise click.ClickException(f"{len(set(batch_ids)) - purged} of the batches named are not dead "
                                   "(see `distbatch dead list`)")


@main.command()
@click.argument("name", type=click.Choice(["accumulate", "accumulate_one"]))
@option("--sha", is_flag=True, help="Print the SHA1 Redis knows it by (for EVALSHA), not its text.")
def script(name: str, sha: bool) -> None:
    """Print an emit script, its includes expanded, as distbatch loads it: for an emitter in
    another language (README: Emitting from another language), which SCRIPT LOADs this text."""
    from .scripts import sha_of, source

    click.echo(sha_of(name) if sha else source(name), nl=sha)


@main.command()
@option("--redis-url", envvar="DISTBATCH_REDIS_URL", default=None,
        help="Redis to use; embedded fakeredis when neither this nor DISTBATCH_REDIS_URL is given.")
@option("--namespace", envvar="DISTBATCH_NAMESPACE", default="distbatch-demo", show_default=True,
        help="Key namespace, the demo's own: one holding bindings the demo did not make is "
        "refused. Env: DISTBATCH_NAMESPACE.")
@option("--events", default=5000, show_default=True, type=click.IntRange(min=1), help="Events to emit.")
@option("--producers", default=3, show_default=True, type=click.IntRange(min=1),
        help="Producer threads.")
@option("--keys", "n_keys", envvar="DISTBATCH_DEMO_KEYS", default=20, show_default=True,
        type=click.IntRange(min=1),
        help="Distinct repos (partitions).")
@option("--count", default=10, show_default=True, type=click.IntRange(1, 1024),
        help="Batch size (at most the buffer cap, 1024: above it a buffer drops its oldest).")
@option("--window", default="200ms", show_default=True, help="Batch window.",
        callback=lambda ctx, param, value: _duration(ctx, param, value) and value)
@option("--rate", default=2000.0, show_default=True, type=_FiniteFloat(min=0, min_open=True),
        help="Events per second, all producers.")
@option("--print-batches", is_flag=True, help="Print every batch as its handler runs.")
def demo(redis_url: str | None, namespace: str, events: int, producers: int, n_keys: int,
         count: int, window: str, rate: float, print_batches: bool) -> None:
    """The whole pipeline in one process: producers, a sweeper and a worker, with a summary."""

    from .demo import run_demo
    from .interrupts import StopFlag, stop_then_exit, taken_by_thread

    stop = StopFlag()
    # Entered first: every thread started after (fakeredis's import starts a native one) inherits
    # the blocked signals, so no handler can run inside fakeredis while it holds its lock. The
    # second Ctrl-C exits at once, as RQ's cold shutdown would.
    with taken_by_thread(stop_then_exit(stop, "the demo")):
        if redis_url:
            batcher = Batcher.from_url(redis_url, namespace=namespace)
        else:
            try:
                import fakeredis
            except ImportError:
                raise click.ClickException(
                    "the embedded Redis of the demo needs fakeredis: pip install 'distbatch[demo]' "
                    "(or pass --redis-url redis://host:6379/0)"
                ) from None
            batcher = Batcher(fakeredis.FakeRedis(), namespace=namespace)
        summary = run_demo(batcher, events=events, producers=producers, keys=n_keys, count=count,
                           window=window, rate=rate, show=print_batches, stop=stop)
    click.echo("")
    _echo_json(summary)
    if summary["interrupted"]:
        sys.exit(130)
    if summary["events_delivered"] != summary["events_in"]:
        raise click.ClickException(
            f"{summary['events_in']} events in, {summary['events_delivered']} delivered within "
            f"{summary['seconds']}s; the rest were dropped with the demo's binding (a window longer "
            "than the demo waits, or a handler that failed: see the log above)")


if __name__ == "__main__":
    main()
