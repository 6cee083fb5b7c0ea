"""The daemon's own files and directories: state records, per-overlay directories."""

from __future__ import annotations

import contextlib
import os
import stat

from overlayd.host.errors import Op, map_os_errors
from overlayd.layout import TEMP_SUFFIX


class LinuxFiles:
    def path_kind(self, path: str) -> str:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "other"
        return "directory" if stat.S_ISDIR(st.st_mode) else "other"

    def list_dir(self, path: str) -> list[str]:
        with map_os_errors(f"list '{path}'", Op.FILE):
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []

    def has_entries(self, path: str) -> bool:
        """Whether the directory PATH holds anything: one entry read, whatever its size."""
        with map_os_errors(f"list '{path}'", Op.FILE), os.scandir(path) as it:
            return next(it, None) is not None

    def read_file(self, path: str) -> bytes | None:
        with map_os_errors(f"read '{path}'", Op.FILE):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except (FileNotFoundError, NotADirectoryError):
                return None

    def write_file(self, path: str, data: bytes) -> None:
        """Atomic: PATH + TEMP_SUFFIX, then a rename. A kill in between leaves the
        temporary, which the state store sweeps."""
        tmp = path + TEMP_SUFFIX
        with map_os_errors(f"write '{path}'", Op.FILE):
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def make_dir(self, path: str, mode: int = 0o755) -> None:
        with map_os_errors(f"create the directory '{path}'", Op.FILE):
            os.mkdir(path, mode)

    def remove_dir(self, path: str) -> None:
        with map_os_errors(f"remove '{path}'", Op.FILE), \
                contextlib.suppress(FileNotFoundError):
            os.rmdir(path)

    def remove_file(self, path: str) -> None:
        with map_os_errors(f"remove '{path}'", Op.FILE), \
                contextlib.suppress(FileNotFoundError):
            os.unlink(path)
