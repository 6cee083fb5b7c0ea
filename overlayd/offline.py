"""`overlayd-merge UPPER TARGET`: apply an overlayfs upper directory to a file system offline.

The commit at shutdown of a protected root (`overlayd.root=tmpfs`) runs this in the exitrd,
after `/` is unmounted: TARGET is the root file system mounted read-write, UPPER the upper
directory the overlay used. It is the daemon's own merge code (``host.merge.apply_upper``),
not a second copy, and it imports only what that needs (the standard library, no pydantic),
so the initramfs hooks can carry it: ``--list-files`` prints the files it is made of.

A commit that stops part-way (disk full, an I/O error) leaves a file system the kernel kept
consistent, with each entry wholly old or wholly new (see ``host.merge``); what happened is
printed and written to ``TARGET/var/lib/overlayd/root-commit.failed``, which the daemon
reports in the journal at the next boot. A commit that finishes removes that file.

Exit status: 0 applied, 1 failed (the report says why), 2 bad usage.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from overlayd.host.merge import ApplyError, apply_upper
from overlayd.host.syscalls import syncfs

REPORT = "var/lib/overlayd/root-commit.failed"
USAGE = "usage: overlayd-merge UPPER TARGET | overlayd-merge --list-files"


def say(text: str) -> None:
    print(f"overlayd-merge: {text}", flush=True)


def module_files() -> list[str]:
    """Every file this program loads: its modules and their compiled copies, for an
    initramfs to carry. Extension modules (.so) are listed too; the caller copies their
    libraries."""
    loaded = list(sys.modules.values())  # before importing what only this listing needs
    from importlib.util import cache_from_source

    files: set[str] = set()
    for mod in loaded:
        path = getattr(mod, "__file__", None)
        if not path or not os.path.isfile(path):
            continue
        files.add(os.path.abspath(path))
        if path.endswith(".py"):
            try:
                pyc = cache_from_source(path)
            except (NotImplementedError, ValueError):
                continue
            if os.path.isfile(pyc):
                files.add(os.path.abspath(pyc))
    return sorted(files)


def write_report(target: str, text: str) -> None:
    path = os.path.join(target, REPORT)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    except OSError as e:  # a full disk may refuse even this
        say(f"cannot write {REPORT}: {e.strerror}")


def clear_report(target: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(target, REPORT))


def merge(upper: str, target: str) -> int:
    for what, path in (("upper", upper), ("target", target)):
        if not os.path.isdir(path):
            say(f"the {what} {path} is not a directory")
            return 2
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    say(f"applying {upper} to {target}")
    status = 0
    try:
        done = apply_upper(upper, target)
    except ApplyError as e:
        status = 1
        text = (f"{stamp}: the commit at shutdown stopped at {e.relpath}: {e.cause.strerror} "
                f"after {e.done.entries} entries; those are in the root file system, the "
                "rest of the changes were lost")
        say(text)
        write_report(target, text)
    except OSError as e:
        status = 1
        text = f"{stamp}: the commit at shutdown failed: {e.strerror or e}"
        say(text)
        write_report(target, text)
    else:
        clear_report(target)
        say(f"applied {done.entries} entries, {done.bytes} bytes in {done.seconds:.1f} s")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    except OSError as e:
        say(f"syncing {target} failed: {e.strerror}")
        status = 1
    finally:
        os.close(fd)
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--list-files"]:
        print("\n".join(module_files()))
        return 0
    if len(args) != 2 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    return merge(args[0], args[1])


if __name__ == "__main__":
    sys.exit(main())
