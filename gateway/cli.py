"""The ``schoolgate`` command line: run, check, demo.

Exit codes: 0 success, 1 bad configuration or failed start, 2 usage error
(argparse), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .config import ConfigError, config_warnings, load_config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``schoolgate`` console script and ``python -m gateway``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schoolgate",
        description="Admission-control reverse proxy for school platforms.",
    )
    parser.add_argument("--version", action="version", version=f"schoolgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    run.set_defaults(handler=_run)

    check = sub.add_parser("check", help="test a configuration file and exit")
    check.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    check.set_defaults(handler=_check)

    demo = sub.add_parser("demo", help="run the gateway in front of demo school servers")
    demo.add_argument("--port", type=_port, default=8080, metavar="N",
                      help="gateway port on 127.0.0.1 (default 8080)")
    demo.set_defaults(handler=_demo)
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    # Checked here first so that a bad file fails before any process is forked.
    load_config(args.config)
    from .server.supervisor import run

    return run(args.config)


def _check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        print(f"schoolgate: configuration file {args.config} test failed", file=sys.stderr)
        return 1
    # Like nginx -t: warnings go to stderr and the test still succeeds.
    for warning in config_warnings(cfg, args.config):
        print(f"schoolgate: warning: {warning}", file=sys.stderr)
    print(f"schoolgate: configuration file {args.config} test is successful")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.port)
