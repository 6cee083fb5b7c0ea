"""Where overlayd's files are looked for. Pure, and free of pydantic (overlayctl's parser
names them)."""

from __future__ import annotations

from pathlib import Path

# NAME.overlay files, the first found wins
SEARCH_PATH = (Path("/etc/overlayd"), Path("/run/overlayd"), Path("/usr/lib/overlayd"))
SUFFIX = ".overlay"
# the daemon's configuration (plus its .d/ drop-ins)
DEFAULT_CONFIG = Path("/etc/overlayd/overlayd.conf")
