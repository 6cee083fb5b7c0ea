"""The one table of an overlay's allowed state changes. The manager applies every change
through ``transition``; anything else is a bug, raised loudly rather than saved."""

from __future__ import annotations

from overlayd.model import Overlay, OverlayState

S = OverlayState

ALLOWED: dict[OverlayState, frozenset[OverlayState]] = {
    # Create writes CREATING before its first mount; recovery cleans what stays CREATING.
    S.CREATING: frozenset({S.ACTIVE}),
    # UNMOUNTED: the mount watcher saw the merged view go (unmounted from outside).
    # FAILED: the FUSE server of a fuse overlay died (its writes are still in the upper).
    S.ACTIVE: frozenset({S.COMMITTING, S.DISCARDING, S.UNMOUNTED, S.FAILED}),
    # Commit mounts it again (with the writes in the image); Discard throws them away; the
    # watcher sees it mounted again (systemctl start of its mount unit).
    S.UNMOUNTED: frozenset({S.COMMITTING, S.DISCARDING, S.ACTIVE}),
    # Commit always remounts; FAILED when it could not.
    S.COMMITTING: frozenset({S.ACTIVE, S.FAILED}),
    # A refused (busy) discard goes back; one that unmounted part of the overlay is FAILED.
    S.DISCARDING: frozenset({S.ACTIVE, S.FAILED}),
    # A failed overlay may be committed (to try the remount again) or discarded; recovery
    # repairs it.
    S.FAILED: frozenset({S.COMMITTING, S.DISCARDING, S.ACTIVE}),
}


class BadTransition(Exception):
    pass


def transition(rec: Overlay, to: OverlayState, **changes: object) -> Overlay:
    """REC in state TO (with CHANGES), if the table allows it."""
    if to is not rec.state and to not in ALLOWED[rec.state]:
        raise BadTransition(f"overlay '{rec.name}': {rec.state} -> {to} is not allowed")
    return rec.evolve(state=to, **changes)


def after_discard_failed(previous: OverlayState, merged_down: bool) -> OverlayState:
    """A discard that stopped: nothing changed (back to PREVIOUS), or the overlay is no
    longer mounted at its mount point although its layers are (FAILED)."""
    if merged_down:
        return S.FAILED
    return S.ACTIVE if previous is S.COMMITTING else previous


def after_commit_refused(previous: OverlayState) -> OverlayState:
    """A commit refused before anything changed: back as it was."""
    return previous
