"""overlayd: a read-only image with every write in RAM, then Commit or Discard.

Reading order for a newcomer: ``model.py`` (what an overlay is) -> ``transitions.py``
(its states) -> ``manager/`` (the one owner of state) -> ``engine/`` (the procedures,
which return what they did) -> ``host/ports.py`` (what the engine asks of the kernel) ->
``host/linux.py`` (how the kernel is asked). README's "How it is built" has the map.
"""

__version__ = "0.1.0"
