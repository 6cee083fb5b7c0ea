"""overlayd: a read-only image with every write in RAM, then Commit or Discard.

Reading order for a newcomer: ``model.py`` (what an overlay is) -> ``errors.py``
(what can go wrong) -> ``layout.py`` (where things live) -> ``manager.py`` (the
engine: create, commit, discard) -> ``host/base.py`` (what the engine asks of the
kernel) -> ``host/linux.py`` (how the kernel is asked).
"""

__version__ = "0.1.0"
