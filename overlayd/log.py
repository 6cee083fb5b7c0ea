"""Logging set-up: the only module that imports systemd.

When journald is there and our stderr is connected to it (``$JOURNAL_STREAM`` names
stderr, as systemd sets it for services), records go to the journal as structured
entries: ``SYSLOG_IDENTIFIER=overlayd``, the ``MESSAGE_ID`` of their event and the
``OVERLAYD_*`` fields given in ``extra``. Elsewhere (a terminal, the tests, no journald)
they are plain lines on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from overlayd.events import MESSAGE_IDS, NOTICE, Event

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _syslog_priority(levelno: int) -> int:
    for threshold, prio in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                            (NOTICE, 5), (logging.INFO, 6)):
        if levelno >= threshold:
            return prio
    return 7


def journal_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The journal fields of RECORD besides MESSAGE: ours only, upper case, no None, in
    the types systemd.journal.send takes."""
    fields: dict[str, Any] = {
        "PRIORITY": str(_syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": "overlayd",
        "CODE_FILE": record.pathname, "CODE_LINE": record.lineno,  # an int, for journal.send
        "CODE_FUNC": record.funcName,
    }
    for key, value in record.__dict__.items():
        if key.startswith("OVERLAYD_") and value is not None:
            fields[key] = str(value)
    event = record.__dict__.get("OVERLAYD_EVENT")
    if event in MESSAGE_IDS:
        fields["MESSAGE_ID"] = MESSAGE_IDS[Event(event)]
    return fields


class JournalHandler(logging.Handler):
    """Sends each record with exactly the fields of journal_fields (systemd-python's own
    handler would also send every attribute of the record, e.g. 'args', as fields)."""

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(self.format(record), **journal_fields(record))
        except Exception:
            self.handleError(record)


def stderr_is_journal() -> bool:
    """systemd's own rule: log to the journal when $JOURNAL_STREAM is our stderr."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: int = logging.INFO, *, journal: bool | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    if journal is None:
        journal = stderr_is_journal()
    handler: logging.Handler | None = None
    if journal:
        try:
            handler = JournalHandler()
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("overlayd: %(message)s"))
    root.addHandler(handler)
