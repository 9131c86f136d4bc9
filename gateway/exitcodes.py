"""Exit codes of the ``schoolgate`` command, one per kind of failure so that a
service manager or a script can tell them apart (``schoolgate <command> --help``
lists those of each command)."""

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
