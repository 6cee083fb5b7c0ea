"""The journal events overlayd emits: one fixed MESSAGE_ID per kind of event.

Pure data, shared by the log module (which attaches the id), the message catalog
(packaging/catalog/overlayd.catalog explains each id for ``journalctl -x``) and the tests
that keep the two in step. An id never changes once shipped: scripts filter on it
(``journalctl MESSAGE_ID=...``).
"""

from __future__ import annotations

import enum
import logging


class Event(enum.StrEnum):
    CREATED = "created"
    COMMITTED = "committed"
    DISCARDED = "discarded"
    RECOVERED = "recovered"
    FAILED = "failed"
    DENIED = "denied"
    STARTED = "started"
    STOPPED = "stopped"
    UNMOUNTED = "unmounted"  # the merged view went from the mount table, not by overlayd
    USAGE = "usage"  # an overlay's RAM rose to a higher UpperUsage level
    RECONFIGURED = "reconfigured"  # a new spec applied to a live overlay (Reconfigure)


MESSAGE_IDS: dict[Event, str] = {
    Event.CREATED: "d5a2d118446044e79a96c4988d366780",
    Event.COMMITTED: "9ed95852c9b34a649e4ec0194e93cc40",
    Event.DISCARDED: "d31a0a32853e44d99b04e54863b419a2",
    Event.RECOVERED: "140e70459e80486caeb8d8dc7ef0d2ed",
    Event.FAILED: "c1a4fa66828d4dc8bb0d4b5ef9e8776e",
    Event.DENIED: "38eef1e413714090951379d5f7da58e5",
    Event.STARTED: "a59ad080f043474794ddd4c54c3f9efb",
    Event.STOPPED: "dab053eff374465fa4439c11faa093dd",
    Event.UNMOUNTED: "247acf3d340946fa92612930c06e2da6",
    Event.USAGE: "bbd012253a82478dad69e048749a6b15",
    Event.RECONFIGURED: "b59177fba1fb4e08ab6430df7d1f99d6",
}

# syslog's "notice": normal but significant. Expected failures (a refused request, a busy
# overlay) log here, never as errors and never with a traceback.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
