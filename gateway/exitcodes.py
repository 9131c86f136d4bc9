"""Exit codes of the ``schoolgate`` command, one per kind of failure so that a
service manager or a script can tell them apart (``schoolgate <cmd> --help``
lists them)."""

from __future__ import annotations

OK = 0
# The file cannot be read, is not valid TOML, or fails a check (the message
# names the file, the key path and the problem).
CONFIG = 1
# Bad arguments (argparse's own code).
USAGE = 2
# A listener cannot be bound: the address is already served (another
# schoolgate or another program), not available on this host, or a port
# below 1024 without CAP_NET_BIND_SERVICE.
LISTEN = 3
# Workers failed: one kept dying right after starting, or exited with an
# error while the gateway stopped.
WORKERS = 4
# ``schoolgate check --strict`` found warnings.
WARNINGS = 5
# Stopped by Ctrl-C before the gateway was running (128 + SIGINT).
INTERRUPTED = 130

HELP = """\
exit codes:
  0    success (run: stopped cleanly after SIGTERM/SIGINT)
  1    configuration error: unreadable file, invalid TOML, or a failed check
  2    usage error (bad arguments)
  3    cannot listen: the address is already served (another schoolgate or
       another program), is not on this host, or is a port below 1024 without
       CAP_NET_BIND_SERVICE
  4    workers failed: one kept dying at startup, or exited with an error
       while the gateway stopped
  5    check --strict: the configuration has warnings
  130  interrupted (Ctrl-C) before the gateway was running"""
