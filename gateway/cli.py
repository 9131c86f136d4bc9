"""The ``schoolgate`` command line: run, check, demo.

Exit codes are those of :mod:`gateway.exitcodes` (each subcommand's
``--help`` lists them): 0 success, 1 configuration error, 2 usage error,
3 cannot listen (address already served), 4 workers failed, 5 ``check
--strict`` found warnings, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from . import __version__, exitcodes
from .config import ConfigError, config_warnings, load_config

# How long `check` waits for [redis] url to answer PING: long enough for a
# server across a school's network, short enough that a dead one does not
# stall a deployment script.
REDIS_TIMEOUT = 2.0

SIGNALS = """\
signals (to the main process; it passes them on to the workers):
  SIGHUP          reload FILE: a bad file is logged and the running
                  configuration kept; limits keep counting across it;
                  [server] changes (listen, workers, TLS) need a restart
                  (systemctl reload schoolgate)
  SIGTERM, SIGINT drain: stop accepting, let requests in flight finish (at
                  most [timeouts] drain seconds), then exit
  SIGUSR1         reopen the access log file, after logrotate moved it"""

ENVIRONMENT = """\
environment:
  SCHOOLGATE_LOG  log level of the gateway's own log on standard error:
                  DEBUG, INFO (default), WARNING or ERROR
  TMPDIR          where request and response bodies are spooled to disk
                  when [server] temp_dir is not set (default /tmp)"""

RUN_CODES = """\
exit codes:
  0    stopped cleanly after SIGTERM or SIGINT
  1    configuration error: unreadable file, invalid TOML, or a failed check
  2    usage error (bad arguments)
  3    cannot listen: the address is already served (another schoolgate or
       another program), is not on this host, or is a port below 1024 without
       CAP_NET_BIND_SERVICE
  4    workers failed: one kept dying at startup, or exited with an error
       while the gateway stopped
  130  interrupted (Ctrl-C) before the gateway was running"""

CHECK_CODES = """\
exit codes:
  0    the file is valid (warnings, if any, on standard error)
  1    configuration error: unreadable file, invalid TOML, or a failed check
  2    usage error (bad arguments)
  5    --strict only: the file is valid but has warnings"""

DEMO_CODES = """\
exit codes:
  0    stopped cleanly (Ctrl-C or SIGTERM once the gateway runs)
  1    the port is taken or a demo school server did not start
  2    usage error (bad arguments)
  3, 4 as for schoolgate run"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``schoolgate`` console script and ``python -m gateway``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schoolgate",
        description="Admission-control reverse proxy for school platforms: per-school "
                    "limits, priority queues, and a waiting room instead of 502s.",
        epilog="Run `schoolgate COMMAND --help` for what a command does, its signals, "
               "environment variables and exit codes.",
    )
    parser.add_argument("--version", action="version", version=f"schoolgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the gateway", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_para("Run the gateway in the foreground. FILE is checked first (as by "
                    "`schoolgate check`); then each listen address is claimed, so that a "
                    "second gateway on an address already served refuses to start; then "
                    "[server] workers processes are started and watched (one that dies is "
                    "replaced). The gateway's own log goes to standard error: under "
                    "systemd, `journalctl -u schoolgate`."),
        epilog=f"{SIGNALS}\n\n{ENVIRONMENT}\n\n{RUN_CODES}",
    )
    _config_arguments(run)
    run.set_defaults(handler=_run)

    check = sub.add_parser(
        "check", help="test a configuration file and exit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_para("Test FILE and exit, like `nginx -t`: read it, check every key, and "
                    "print the file, key path and problem of the first error. Settings "
                    "that are valid but probably not what was meant are printed as "
                    "warnings on standard error, as is a [redis] url that does not answer "
                    f"within {REDIS_TIMEOUT:g} s (skip that with --offline); warnings fail "
                    "the test only with --strict. Nothing is bound or started."),
        epilog=CHECK_CODES,
    )
    _config_arguments(check)
    check.add_argument("--offline", action="store_true",
                       help="do not contact anything the file names ([redis] url)")
    check.add_argument("--strict", action="store_true",
                       help=f"fail (exit {exitcodes.WARNINGS}) when there are warnings")
    check.set_defaults(handler=_check)

    demo = sub.add_parser(
        "demo", help="run the gateway in front of demo school servers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_para("Start demo school servers on free loopback ports and the gateway in "
                    "front of them on 127.0.0.1:PORT, print the URLs to try, and run until "
                    "Ctrl-C. Nothing is written outside a temporary directory."),
        epilog=f"{ENVIRONMENT}\n\n{DEMO_CODES}",
    )
    demo.add_argument("--port", type=_port, default=8080, metavar="N",
                      help="gateway port on 127.0.0.1 (default 8080)")
    demo.set_defaults(handler=_demo)
    return parser


def _para(text: str) -> str:
    # The raw formatter keeps the epilogs' columns; descriptions are wrapped here.
    return textwrap.fill(text, 78)


def _config_arguments(sub: argparse.ArgumentParser) -> None:
    # Both spellings: `schoolgate run FILE` (as in the systemd unit) and the
    # `--config FILE` of earlier versions.
    sub.add_argument("file", nargs="?", metavar="FILE", help="TOML configuration file")
    sub.add_argument("--config", metavar="FILE", help="the same, as an option")
    sub.set_defaults(parser=sub)


def _config_path(args: argparse.Namespace) -> str:
    if args.file and args.config and args.file != args.config:
        args.parser.error("give the configuration file once (FILE or --config FILE)")
    path = args.file or args.config
    if not path:
        args.parser.error("the configuration file is required (FILE or --config FILE)")
    return path


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    path = _config_path(args)
    # Checked here first so that a bad file fails before any process is forked.
    load_config(path)
    from .server.supervisor import run

    return run(path)


def _check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        print(f"schoolgate: configuration file {path} test failed", file=sys.stderr)
        return exitcodes.CONFIG
    # Like nginx -t: warnings go to stderr and the test still succeeds.
    warnings = [str(w) for w in config_warnings(cfg, path)]
    if cfg.redis.url and not args.offline:
        problem = redis_problem(cfg.redis.url, REDIS_TIMEOUT)
        if problem is not None:
            warnings.append(f"{path}: redis.url: {problem} (--offline skips this check)")
    for warning in warnings:
        print(f"schoolgate: warning: {warning}", file=sys.stderr)
    if warnings and args.strict:
        print(f"schoolgate: configuration file {path} test failed: "
              f"{len(warnings)} warning(s) and --strict", file=sys.stderr)
        return exitcodes.WARNINGS
    print(f"schoolgate: configuration file {path} test is successful")
    return exitcodes.OK


def redis_problem(url: str, timeout: float) -> str | None:
    """None if the Redis server at ``url`` answers PING within ``timeout``
    seconds (connect and answer each), else a short sentence saying why not.
    The URL's password is never part of the sentence."""
    import redis

    shown = _redact(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                      socket_timeout=timeout)
    except ValueError as exc:
        return f"cannot use {shown}: {exc}"
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        return f"{shown} refused the credentials in the URL"
    except redis.exceptions.TimeoutError:
        return f"{shown} did not answer within {timeout:g} s"
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"cannot reach {shown}: {_reason(exc)}"
    finally:
        client.close()
    return None


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:" if parts.username else ":"
        return parts._replace(netloc=f"{user}***@{netloc}").geturl()
    except ValueError:
        return "the URL"


def _reason(exc: BaseException) -> str:
    # redis-py wraps the socket error ("Error 111 connecting to host:port.
    # Connection refused."); its strerror, when there is one, is the reason.
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc).strip() or type(exc).__name__


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.port)
