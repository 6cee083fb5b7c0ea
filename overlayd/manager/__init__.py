"""OverlayManager, the only owner of overlay state (being split into modules)."""

from overlayd.manager.core import OverlayManager

__all__ = ["OverlayManager"]
