"""OverlayManager: the engine's async face, and the only owner of overlay state.

It keeps the registry of overlays (frozen records, replaced on every change), serializes
calls per overlay with a lock, runs the blocking procedures of ``engine`` in worker
threads (so the event loop stays responsive while a commit copies gigabytes), applies
every state change through ``transitions``, saves through the one ``StateStore``, tells
listeners about changes, and logs each outcome once. Errors leave here without a path of
the daemon's own files in them.

One class, one object, written in parts: each part is a class built on the one before it,
so every part works on the same state (made in ``core``, changed there only) and mypy checks
every call between them. Read them in this order:

  core.py        ManagerCore: every field of state and the one way to change it (``_move``:
                 transitions.transition, then announced; saved through StateStore); the
                 per-overlay locks, worker threads, listeners, a failure's log line
  reading.py     Reading(ManagerCore): what the bus reads (records, usage, space, diff)
  root.py        RootOverlay(Reading): the root file system on an overlay (adopted at
                 start; its commit at shutdown; the next boot's setting)
  lifecycle.py   Lifecycle(RootOverlay): start (recovery), Create with its RAM reserved,
                 Reconfigure, Discard
  committing.py  Committing(Reading): Commit into the image or a layer file, Squash, Revert
  following.py   Following(ManagerCore): the mount table and the FUSE servers watched

Parts of one class rather than collaborators holding a reference to the owner: the state
keeps a single owner that no part has to reach into from outside, and the code of each part
reads as it did in one file (``self._lock``, ``self._move``).
"""

from overlayd.manager.committing import Committing
from overlayd.manager.following import Following
from overlayd.manager.lifecycle import Lifecycle

__all__ = ["OverlayManager"]


class OverlayManager(Lifecycle, Committing, Following):
    """The one owner of overlay state: the parts above, as one object (see the module)."""
