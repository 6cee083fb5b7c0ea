"""The engine's procedures: create, commit, teardown and recovery, on any ``Host``.

Synchronous and lock-free: the manager runs each in a worker thread under the
overlay's lock. Create undoes every completed step in reverse when a later one fails;
Commit always brings the overlay back mounted, with a fresh upper on success and the
same upper (the writes still in RAM) on failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd import checks
from overlayd.config import DaemonConfig
from overlayd.errors import (
    CommitFailed,
    InvalidSpec,
    MountFailed,
    NoSpace,
    OverlayBusy,
    OverlaydError,
    describe_holders,
)
from overlayd.host.base import Applied, Host, ImageInfo, Progress
from overlayd.host.mountinfo import MountInfo
from overlayd.layout import Layout, is_within, mount_source
from overlayd.model import (
    ALLOWED_MOUNT_OPTIONS,
    LowerKind,
    Overlay,
    OverlaySpec,
    OverlayState,
    parse_size,
)
from overlayd.rollback import Rollback
from overlayd.state import dump_record, load_record

log = logging.getLogger(__name__)


# -- ownership: what overlayd may unmount --------------------------------------------------

def owns_layer(rec: Overlay) -> Callable[[MountInfo], bool]:
    """The tmpfs and the overlay carry our source string."""
    return lambda m: m.source == mount_source(rec.name)


def owns_lower(rec: Overlay) -> Callable[[MountInfo], bool]:
    """The lower mount sits in our private per-overlay directory and comes from the image's
    loop device (or the image itself, for a block device)."""
    def check(m: MountInfo) -> bool:
        if m.target != rec.lower_dir:
            return False
        if rec.image_kind is LowerKind.BLOCK:
            return True
        return m.source.startswith("/dev/loop")
    return check


def lower_source(rec: Overlay, dir_fd: int | None = None) -> str:
    """The overlay's lowerdir: our image mount, or the directory lower (through DIR_FD,
    opened and verified by open_lower_dir, when the path must not be trusted again)."""
    if rec.image_kind is not LowerKind.DIRECTORY:
        return rec.lower_dir
    return f"/proc/self/fd/{dir_fd}" if dir_fd is not None else rec.image


def driver_for(host: Host, fstype: str) -> str:
    return checks.driver_for(fstype, host.kernel_filesystems())


# -- create ---------------------------------------------------------------------------------

def create(host: Host, cfg: DaemonConfig, spec: OverlaySpec, existing: list[Overlay], *,
           owner_uid: int, now_usec: int) -> Overlay:
    layout = Layout.for_overlay(cfg.runtime_dir, spec.name)
    size = checks.choose_size(spec, cfg, host.memory_total())
    if host.path_kind(str(layout.base)) != "missing":
        raise OverlaydError(f"Leftovers of an earlier overlay '{spec.name}' are in "
                            f"'{layout.base}'; restart overlayd to clean them up.")
    rb = Rollback()
    # A caller's mount point is opened once; the checks and the mount use that directory,
    # so no symlink swapped in between can move the mount (non-root: no symlinks at all).
    is_default = spec.mountpoint is None
    mp_fd: int | None = None
    if is_default:
        mountpoint = cfg.default_mountpoint(spec.name)
    else:
        mp_fd, mountpoint = host.open_mountpoint(spec.mountpoint or "",
                                                 follow_symlinks=owner_uid == 0)
        rb.push("close the mount point", host.close_fd, mp_fd)
    try:
        options = spec.mount_options
        if owner_uid != 0:
            checks.check_user_mountpoint(mountpoint, owner_uid, host.user_name(owner_uid), cfg)
            options = checks.user_mount_options(options)
        kind = host.path_kind(mountpoint) if is_default else "directory"
        checks.check_mountpoint(mountpoint, kind, is_default=is_default, cfg=cfg,
                                mounts=host.mounts(), overlays=existing)
    except BaseException:
        rb.unwind()
        raise
    try:
        info = host.open_image(spec.image, spec.image_fd, as_uid=owner_uid)
    except BaseException:
        rb.unwind()
        raise
    rb.push("close the image", host.close_image, info)
    try:
        shown = spec.image or info.path
        if info.kind is LowerKind.DIRECTORY:
            fstype, driver = "", ""
            if spec.fstype is not None:
                raise InvalidSpec(f"The image '{shown}' is a directory; it has no 'fstype'.",
                                  "fstype")
        else:
            fstype, driver = checks.choose_fstype(shown, spec.fstype, info.detected_fstype,
                                                  host.kernel_filesystems())
        rec = Overlay(
            name=spec.name, state=OverlayState.CREATING, image=info.path, image_kind=info.kind,
            image_dev=info.dev, image_ino=info.ino, fstype=fstype, mountpoint=mountpoint,
            mountpoint_created=is_default, size=size, mount_options=options,
            base_dir=str(layout.base), lower_dir=str(layout.lower), tmpfs_dir=str(layout.tmpfs),
            upper_dir=str(layout.upper), work_dir=str(layout.work), owner_uid=owner_uid,
            created_usec=now_usec,
        )
        _make_dir(host, rb, str(layout.base), 0o700)
        host.write_file(str(layout.record), dump_record(rec))
        rb.push("remove the state record", host.remove_file, str(layout.record))
        if info.kind is not LowerKind.DIRECTORY:
            _make_dir(host, rb, rec.lower_dir, 0o755)
            _mount_lower(host, rb, rec, info, driver, read_only=True)
        _make_dir(host, rb, rec.tmpfs_dir, 0o700)
        host.mount_tmpfs(mount_source(rec.name), rec.tmpfs_dir, size)
        rb.push("unmount the tmpfs", host.unmount, rec.tmpfs_dir, owns_layer(rec))
        host.prepare_upper(lower_source(rec), rec.upper_dir, rec.work_dir)
        if is_default:
            if host.path_kind(str(cfg.mount_root_dir)) == "missing":
                host.make_dir(str(cfg.mount_root_dir), 0o755)  # shared by all; never removed
            if host.path_kind(mountpoint) == "missing":
                _make_dir(host, rb, mountpoint, 0o755)
        _mount_overlay(host, rec, target_fd=mp_fd)
        rb.push("unmount the overlay", host.unmount, mountpoint, owns_layer(rec))
        checks.check_overlay_options(host.mounts(), mountpoint, mount_source(rec.name))
        rec.state = OverlayState.ACTIVE
        host.write_file(str(layout.record), dump_record(rec))
    except BaseException:
        rb.unwind()
        raise
    host.close_image(info)
    if mp_fd is not None:
        host.close_fd(mp_fd)
    return rec


def _make_dir(host: Host, rb: Rollback, path: str, mode: int) -> None:
    host.make_dir(path, mode)
    rb.push(f"remove '{path}'", host.remove_dir, path)


def _mount_lower(host: Host, rb: Rollback | None, rec: Overlay, info: ImageInfo, driver: str, *,
                 read_only: bool) -> None:
    """Mount the image at rec.lower_dir: through a new loop device for a file (read-only
    or read-write as asked; autoclear detaches it when the mount goes), directly for a
    block device."""
    if rec.image_kind is LowerKind.BLOCK:
        host.mount_fs(info.path, rec.lower_dir, driver, read_only=read_only)
    else:
        loop = host.attach_loop(info, read_only=read_only, name=info.path)
        try:
            host.mount_fs(loop.path, rec.lower_dir, driver, read_only=read_only)
        finally:
            loop.release()  # the mount holds the device now; autoclear frees it after
        rec.loop_device = loop.path
    if rb is not None:
        rb.push("unmount the image", host.unmount, rec.lower_dir, owns_lower(rec))


def _mount_overlay(host: Host, rec: Overlay, dir_fd: int | None = None,
                   target_fd: int | None = None) -> None:
    host.mount_overlay(mount_source(rec.name), rec.mountpoint, lower=lower_source(rec, dir_fd),
                       target_fd=target_fd,
                       upper=rec.upper_dir, work=rec.work_dir, options=rec.mount_options)


# -- commit ---------------------------------------------------------------------------------

@dataclass
class CommitOutcome:
    applied: Applied | None = None
    error: OverlaydError | None = None
    remount_problems: list[str] = field(default_factory=list)
    free_old_upper: Callable[[], None] = lambda: None  # RAM of the committed upper


@dataclass
class Committed:
    applied: Applied
    free_old_upper: Callable[[], None]  # call after replying: frees the old upper's RAM


def commit(host: Host, rec: Overlay, progress: Progress | None, *, as_uid: int = 0
           ) -> Committed:
    """Unmount, apply the upper to the image opened read-write, sync, go back read-only,
    remount on a fresh upper. On failure the upper is kept and the overlay remounted.
    For a caller AS_UID other than root the image must open read-write as that caller."""
    if rec.fstype in checks.READ_ONLY_FSTYPES:
        raise CommitFailed(f"Overlay '{rec.name}' cannot be committed: its image holds "
                           f"{rec.fstype}, which is read-only by design. The writes stay in RAM; "
                           "Diff lists them, and Discard throws them away.")
    # Open the image both ways before anything changes: a file that can't be opened (or
    # was replaced) fails the commit here, and the way back never depends on the path.
    if as_uid != 0 and rec.image_kind is LowerKind.DIRECTORY:
        raise CommitFailed(f"Only root may commit overlay '{rec.name}': its lower is the "
                           f"directory '{rec.image}', and overlayd would write into it as root.")
    rw = ro = None
    dir_fd: int | None = None
    if rec.image_kind is LowerKind.DIRECTORY:
        dir_fd = host.open_lower_dir(rec.image, rec.image_dev, rec.image_ino)
    else:
        rw = host.reopen_image(rec.image, rec.image_dev, rec.image_ino, writable=True,
                               as_uid=as_uid)
        try:
            ro = host.reopen_image(rec.image, rec.image_dev, rec.image_ino, writable=False)
        except BaseException:
            host.close_image(rw)
            raise
    try:
        return _commit_opened(host, rec, progress, rw, ro, dir_fd)
    finally:
        for info in (rw, ro):
            if info is not None:
                host.close_image(info)
        if dir_fd is not None:
            host.close_fd(dir_fd)


def _commit_opened(host: Host, rec: Overlay, progress: Progress | None,
                   rw: ImageInfo | None, ro: ImageInfo | None, dir_fd: int | None
                   ) -> Committed:
    mounts = host.mounts()
    try:
        host.unmount(rec.mountpoint, owns_layer(rec), mounts=mounts)
    except OverlayBusy as e:
        raise OverlayBusy(f"Cannot commit overlay '{rec.name}': it is in use by "
                          f"{describe_holders(e.holders)}; close those files and try again.",
                          e.holders) from None
    out = CommitOutcome()
    driver = driver_for(host, rec.fstype)
    try:
        target = lower_source(rec, dir_fd)
        if rw is not None:
            host.unmount(rec.lower_dir, owns_lower(rec), mounts=mounts)
            _mount_lower(host, None, rec, rw, driver, read_only=False)
            target = rec.lower_dir
        out.applied = host.apply_upper(rec.upper_dir, target, progress)
        host.syncfs(target)
    except Exception as e:  # whatever happened, the overlay must come back (below)
        out.error = e if isinstance(e, OverlaydError) else CommitFailed(_unexpected(e))
    _restore_after_commit(host, rec, driver, ro, dir_fd, fresh_upper=out.error is None,
                          out=out)
    # Persisted here, in the worker, so that a daemon stopped mid-call still leaves a
    # record that says what is mounted.
    rec.state = OverlayState.FAILED if out.remount_problems else OverlayState.ACTIVE
    save_record(host, rec)
    if out.error is not None:
        if out.remount_problems:
            raise CommitFailed(f"{out.error} The overlay could not be mounted again "
                               f"({'; '.join(out.remount_problems)}); the writes are still "
                               f"in RAM under '{rec.upper_dir}'.")
        text = (f"Commit of overlay '{rec.name}' failed: {out.error} Nothing was lost: the "
                "writes are still in RAM and the overlay is mounted again; fix the cause and "
                "commit again.")
        raise NoSpace(text) if isinstance(out.error, NoSpace) else CommitFailed(text)
    if out.remount_problems:
        out.free_old_upper()
        raise CommitFailed(f"The changes of overlay '{rec.name}' were written to the image, but "
                           f"the overlay could not be mounted again: "
                           f"{'; '.join(out.remount_problems)}.")
    assert out.applied is not None
    return Committed(out.applied, out.free_old_upper)


def _restore_after_commit(host: Host, rec: Overlay, driver: str, ro: ImageInfo | None,
                          dir_fd: int | None, *, fresh_upper: bool, out: CommitOutcome) -> None:
    def step(what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except Exception as e:  # record it and stop: later steps build on this one
            text = str(e) if isinstance(e, OverlaydError) else _unexpected(e)
            out.remount_problems.append(f"{what}: {text}")
            return False

    mounts: list[MountInfo] = []
    if not step("read the mount table", lambda: mounts.extend(host.mounts())):
        return
    if ro is not None:
        lower = [m for m in mounts if m.target == rec.lower_dir]
        if lower and "ro" not in lower[-1].options:
            if not step("unmount the image",
                        lambda: host.unmount(rec.lower_dir, owns_lower(rec), mounts=mounts)):
                return
            lower = []
        if not lower and not step(
                "mount the image read-only",
                lambda: _mount_lower(host, None, rec, ro, driver, read_only=True)):
            return
    if fresh_upper:
        def renew() -> None:
            out.free_old_upper = host.detach_for_later(rec.tmpfs_dir, owns_layer(rec),
                                                       mounts=mounts)
            host.mount_tmpfs(mount_source(rec.name), rec.tmpfs_dir, rec.size)
            host.prepare_upper(lower_source(rec, dir_fd), rec.upper_dir, rec.work_dir)
        if not step("start a fresh upper", renew):
            return
    step("mount the overlay", lambda: _mount_overlay(host, rec, dir_fd))


def diff(host: Host, rec: Overlay) -> list[tuple[str, str]]:
    """(path, kind) of every change in the upper, against the lower (a directory lower is
    opened and verified first, as for Commit)."""
    if rec.image_kind is not LowerKind.DIRECTORY:
        return host.diff(rec.upper_dir, rec.lower_dir)
    dir_fd = host.open_lower_dir(rec.image, rec.image_dev, rec.image_ino)
    try:
        return host.diff(rec.upper_dir, lower_source(rec, dir_fd))
    finally:
        host.close_fd(dir_fd)


def _unexpected(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "the tree of changes is nested too deeply to walk."
    if isinstance(e, OSError):
        return f"{e.strerror or e}."
    return f"an unexpected {type(e).__name__}."


def save_record(host: Host, rec: Overlay) -> None:
    try:
        host.write_file(os.path.join(rec.base_dir, "overlay.json"), dump_record(rec))
    except OverlaydError as e:
        log.warning("Cannot save the state of overlay '%s': %s, ignoring.", rec.name, e)


# -- discard / teardown ---------------------------------------------------------------------

def teardown(host: Host, rec: Overlay, *, force: bool) -> None:
    """Unmount overlay, tmpfs and image (lazily with FORCE), remove our directories and
    the record. Without FORCE a busy overlay raises OverlayBusy and nothing changes."""
    mounts = host.mounts()
    try:
        host.unmount(rec.mountpoint, owns_layer(rec), mounts=mounts)
    except OverlayBusy as e:
        if not force:
            raise OverlayBusy(f"Overlay '{rec.name}' is busy: in use by "
                              f"{describe_holders(e.holders)}. Close those files or discard "
                              "with force to detach it anyway.", e.holders) from None
        host.unmount(rec.mountpoint, owns_layer(rec), lazy=True)
    host.unmount(rec.tmpfs_dir, owns_layer(rec), lazy=force, mounts=mounts)
    if rec.image_kind is not LowerKind.DIRECTORY:
        host.unmount(rec.lower_dir, owns_lower(rec), lazy=force, mounts=mounts)
    remove_dirs(host, rec)


def remove_dirs(host: Host, rec: Overlay) -> None:
    if rec.mountpoint_created:
        try:
            host.remove_dir(rec.mountpoint)
        except OverlaydError as e:  # ours but not essential; never fail a discard for it
            log.warning("Cannot remove the mount point '%s': %s, ignoring.", rec.mountpoint, e)
    host.remove_file(os.path.join(rec.base_dir, "overlay.json"))
    for d in (rec.lower_dir, rec.tmpfs_dir, rec.base_dir):
        host.remove_dir(d)


# -- recovery -------------------------------------------------------------------------------

@dataclass
class Recovery:
    adopted: list[Overlay] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # brought back after an interruption
    cleaned: list[str] = field(default_factory=list)  # half-made or dead, removed
    # adopted from their mounts alone, without a record: boot overlays (or units made with
    # overlayctl render)
    booted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def recover(host: Host, cfg: DaemonConfig, boot: dict[str, OverlaySpec] | None = None,
            now_usec: int = 0) -> Recovery:
    """Reconcile state records with the mount table: adopt what is live, finish what an
    interrupted commit left, and remove what a dead daemon left half-made. BOOT: the specs
    of boot overlays (their mount units, not a daemon, made them: no record yet)."""
    boot = boot or {}
    result = Recovery()
    root = str(cfg.runtime_dir)
    mounts = host.mounts()
    for name in host.list_dir(root):
        base = os.path.join(root, name)
        if is_within(cfg.mount_root_dir, base) or host.path_kind(base) != "directory":
            continue
        text = host.read_file(os.path.join(base, "overlay.json"))
        rec = load_record(text) if text is not None else None
        try:
            if rec is None or rec.name != name:
                # Create writes the record before its first mount and teardown removes it
                # last, so live mounts without a record are not a dead daemon's leftovers:
                # a boot overlay, or one made by hand from 'overlayctl render'. Adopt them
                # or keep hands off; never unmount them.
                adopted = adopt_unrecorded(host, cfg, name, boot.get(name), mounts, now_usec)
                if adopted is not None:
                    result.adopted.append(adopted)
                    result.booted.append(name)
                    continue
                _clean_unrecorded(host, cfg, name)
                result.cleaned.append(name)
            else:
                _recover_one(host, rec, mounts, result)
        except OverlaydError as e:
            result.problems.append(f"{name}: {e}")
    return result


def _recover_one(host: Host, rec: Overlay, mounts: list[MountInfo], result: Recovery) -> None:
    def mounted(path: str, owned: Callable[[MountInfo], bool]) -> bool:
        top = [m for m in mounts if m.target == path]
        return bool(top) and owned(top[-1])

    upper_alive = mounted(rec.tmpfs_dir, owns_layer(rec))
    if rec.state in (OverlayState.CREATING, OverlayState.DISCARDING) or not upper_alive:
        teardown(host, rec, force=True)
        result.cleaned.append(rec.name)
        return
    overlay_up = mounted(rec.mountpoint, owns_layer(rec))
    lower = [m for m in mounts if m.target == rec.lower_dir]
    lower_ok = rec.image_kind is LowerKind.DIRECTORY or (
        bool(lower) and owns_lower(rec)(lower[-1]) and "ro" in lower[-1].options)
    if overlay_up:
        if not lower_ok:  # never seen: overlay up over a read-write image. Hands off.
            raise CommitFailed(f"Overlay '{rec.name}' is mounted but its image is not mounted "
                               "read-only; leaving it as it is for an admin to look at.")
        if rec.state is not OverlayState.ACTIVE:  # e.g. stopped right after a commit
            rec.state = OverlayState.ACTIVE
            save_record(host, rec)
        result.adopted.append(rec)
        return
    # An interrupted commit, or the overlay unmounted behind our back: the writes are in
    # the tmpfs, so bring the overlay back over the read-only image and keep them.
    if not lower_ok:
        driver = driver_for(host, rec.fstype)
        if lower:
            host.syncfs(rec.lower_dir)
            host.unmount(rec.lower_dir, owns_lower(rec))
        info = host.reopen_image(rec.image, rec.image_dev, rec.image_ino, writable=False)
        try:
            _mount_lower(host, None, rec, info, driver, read_only=True)
        finally:
            host.close_image(info)
    if rec.image_kind is LowerKind.DIRECTORY:
        dir_fd = host.open_lower_dir(rec.image, rec.image_dev, rec.image_ino)
        try:
            _mount_overlay(host, rec, dir_fd)
        finally:
            host.close_fd(dir_fd)
    else:
        _mount_overlay(host, rec)
    rec.state = OverlayState.ACTIVE
    save_record(host, rec)
    result.adopted.append(rec)
    result.repaired.append(rec.name)


def adopt_unrecorded(host: Host, cfg: DaemonConfig, name: str, spec: OverlaySpec | None,
                     mounts: list[MountInfo], now_usec: int = 0) -> Overlay | None:
    """Overlay NAME is mounted but has no record (a boot overlay: its mount units, not a
    daemon, made it). If all three layers are up it becomes ours, with the record Create
    would have written; SPEC (its .overlay file) says where, or else the mount table does.
    None if none of its layers is mounted; OverlaydError, hands off, if only some are."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    src = mount_source(name)

    def top(path: str) -> MountInfo | None:
        found = [m for m in mounts if m.target == path]
        return found[-1] if found else None

    ours = [m for m in mounts if m.source == src and m.fstype == "overlay"
            and m.super_option("upperdir") == str(layout.upper)]
    lower, tmpfs = top(str(layout.lower)), top(str(layout.tmpfs))
    if lower is None and tmpfs is None and not ours:
        return None  # nothing mounted: leftovers to clean
    merged = top(spec.mountpoint or cfg.default_mountpoint(name)) if spec else \
        (ours[-1] if ours else None)
    layers = [lower is not None and lower.source.startswith("/dev/"),
              tmpfs is not None and tmpfs.source == src and tmpfs.fstype == "tmpfs",
              merged is not None and merged.source == src and merged.fstype == "overlay"]
    if not all(layers) or lower is None or tmpfs is None or merged is None:
        raise MountFailed(f"Overlay '{name}' is mounted without a state record and only in "
                          f"part (image, tmpfs, overlay: "
                          f"{', '.join('up' if x else 'down' for x in layers)}); leaving it "
                          "as it is. If systemd is bringing it up, see 'systemctl status' of "
                          "its mount units.")
    if "ro" not in lower.options:
        raise MountFailed(f"Overlay '{name}': its image is mounted read-write at "
                          f"'{lower.target}'; leaving it as it is.")
    if spec is not None:
        image, options = spec.image or "", spec.mount_options
    else:
        image = (host.loop_backing(lower.source) if lower.source.startswith("/dev/loop")
                 else lower.source) or ""
        options = tuple(o for o in merged.options
                        if o in ALLOWED_MOUNT_OPTIONS and o not in ("rw", "relatime"))
    info = host.open_image(image, None)
    try:
        if info.kind is LowerKind.FILE and host.loop_backing(lower.source) != info.path:
            raise MountFailed(f"Overlay '{name}': '{lower.source}' at '{lower.target}' is "
                              f"not a loop device of '{info.path}'; leaving it as it is.")
        if info.kind is LowerKind.DIRECTORY:
            raise MountFailed(f"Overlay '{name}': its image is a directory.")
        size = tmpfs.super_option("size")
        default_mp = merged.target == cfg.default_mountpoint(name)
        rec = Overlay(
            name=name, state=OverlayState.ACTIVE, image=info.path, image_kind=info.kind,
            image_dev=info.dev, image_ino=info.ino, fstype=lower.fstype,
            mountpoint=merged.target, mountpoint_created=default_mp,
            size=parse_size(size) if size else cfg.default_size,  # mountinfo says '65536k'
            mount_options=options,
            loop_device=lower.source if info.kind is LowerKind.FILE else "",
            base_dir=str(layout.base), lower_dir=str(layout.lower), tmpfs_dir=str(layout.tmpfs),
            upper_dir=str(layout.upper), work_dir=str(layout.work), owner_uid=0,
            created_usec=now_usec)
    finally:
        host.close_image(info)
    host.write_file(str(layout.record), dump_record(rec))
    return rec


def _clean_unrecorded(host: Host, cfg: DaemonConfig, name: str) -> None:
    """A directory without a usable record and with nothing mounted: remove what is left."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    host.remove_file(str(layout.record))
    for d in (str(layout.lower), str(layout.tmpfs), str(layout.base)):
        if host.path_kind(d) == "directory":
            try:
                host.remove_dir(d)
            except MountFailed:
                log.warning("Cannot remove '%s', ignoring.", d)
    mp = cfg.default_mountpoint(name)
    if host.path_kind(mp) == "directory":
        host.remove_dir(mp)
