"""What overlayd asks of overlayfs, shared by the engine, the host and rendered units."""

from __future__ import annotations

# Options overlayd pins on every overlay, so that an upper is plain data it can merge and
# nothing in it refers to lower inodes; mountinfo omits those equal to the kernel default.
PINNED = (("redirect_dir", "off"), ("index", "off"), ("metacopy", "off"), ("xino", "off"))

# File systems that have no write support at all: nothing can be committed into them.
READ_ONLY_FSTYPES = frozenset({"squashfs", "erofs", "iso9660"})
