"""LinuxHost: every port on the real kernel, through syscalls only (no util-linux).

Each port maps its own OSErrors (``host/errors.py``), so nothing above this layer sees
an errno.
"""

from __future__ import annotations

import os
import pwd

from overlayd.errors import OverlaydError
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.files import LinuxFiles
from overlayd.host.imagelocks import LinuxImageLocks
from overlayd.host.images import LinuxImages
from overlayd.host.layerfiles import LinuxLayerFiles
from overlayd.host.layers import LinuxLayers
from overlayd.host.mounts import LinuxMounts
from overlayd.host.overlaymount import Merges
from overlayd.host.uppers import Uppers


class LinuxSystem:
    def memory_total(self) -> int:
        with map_os_errors("read the size of memory from /proc/meminfo", Op.FILE), \
                open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
        raise OverlaydError("Cannot read the size of memory from /proc/meminfo.")

    def kernel_filesystems(self) -> frozenset[str]:
        with map_os_errors("read /proc/filesystems", Op.FILE), open("/proc/filesystems") as f:
            return frozenset(line.split()[-1] for line in f if line.strip())

    def user_name(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def fs_space(self, path: str) -> tuple[int, int]:
        """f_bfree, not f_bavail: a commit writes as root, which may use the reserve."""
        with map_os_errors(f"read the free space of '{path}'", Op.FILE):
            v = os.statvfs(path)
        return v.f_blocks * v.f_frsize, v.f_bfree * v.f_frsize


class LinuxHost:
    def __init__(self) -> None:
        self.system = LinuxSystem()
        self.images = LinuxImages()
        self.locks = LinuxImageLocks()
        self.mounts = LinuxMounts()
        self.files = LinuxFiles()
        self.layers = LinuxLayers()
        self.layerfiles = LinuxLayerFiles()
        self.upper = Uppers(self.mounts)
        self.merge = Merges()
