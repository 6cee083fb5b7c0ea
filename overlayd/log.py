"""Logging set-up: the only module that imports systemd.

Under systemd (``$JOURNAL_STREAM`` set) records go to the journal with their ``extra``
fields as structured journal fields (``OVERLAYD_NAME=`` ...) and
``SYSLOG_IDENTIFIER=overlayd``; elsewhere they go to stderr as plain lines.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: int = logging.INFO, *, journal: bool | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    if journal is None:
        journal = "JOURNAL_STREAM" in os.environ
    handler: logging.Handler | None = None
    if journal:
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="overlayd")
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("overlayd: %(message)s"))
    root.addHandler(handler)
