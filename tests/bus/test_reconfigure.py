"""Reconfigure over the real bus (busctl and gdbus as separate processes, as root and as
uid 65534 against the session's polkitd), ``overlayctl reload``, and a standalone daemon
that re-reads its configuration on SIGHUP and keeps the old one when the new is bad."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import OVERLAY_IFACE, Daemon, start_daemon, stop_daemon

NOBODY = 65534
MiB = 1 << 20


def reconfigure(d: Daemon, name: str, *spec: str, uid: int | None = None,
                interactive: bool = False):  # type: ignore[no-untyped-def]
    n = len(spec) // 3
    flag = f"--allow-interactive-authorization={'yes' if interactive else 'no'}"
    return d.busctl(flag, "call", "org.overlayd.Overlayd1", "/org/overlayd/Overlayd1",
                    "org.overlayd.Overlayd1.Manager", "Reconfigure", "sa{sv}a{sv}", name,
                    str(n), *spec, "0", uid=uid)


def test_a_new_size_applies_to_the_live_tmpfs_and_the_rest_is_named(
        clean: Daemon, bus_image: Path) -> None:
    path = clean.create("re", bus_image, "size", "t", str(32 * MiB))
    mp = clean.prop(path, "MountPoint")
    (Path(mp) / "kept.txt").write_text("kept\n")
    r = reconfigure(clean, "re", "size", "t", str(64 * MiB), "mountpoint", "s", "/elsewhere",
                    "image", "s", str(bus_image))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('asa{ss} 1 "size" 1 "mountpoint" "the overlay is mounted')
    assert clean.prop(path, "UpperSize") == str(64 * MiB)
    v = os.statvfs(mp)  # overlayfs answers statfs from its upper: the tmpfs
    assert v.f_blocks * v.f_frsize == 64 * MiB
    assert (Path(mp) / "kept.txt").read_text() == "kept\n"
    assert clean.prop(path, "MountPoint") == mp
    # the Overlay object has it too (gdbus), and a string size as in .overlay files
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Reconfigure", "{'size': <'48M'>}", "{}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(['size'], @a{ss} {})"
    assert clean.prop(path, "UpperSize") == str(48 * MiB)
    # the same again changes nothing
    r = reconfigure(clean, "re", "size", "t", str(48 * MiB))
    assert r.stdout.strip() == "asa{ss} 0 0"


def test_below_what_is_used_and_bad_shapes_are_clear_errors(
        clean: Daemon, bus_image: Path) -> None:
    path = clean.create("tight", bus_image, "size", "t", str(16 * MiB))
    with open(Path(clean.prop(path, "MountPoint")) / "ten.bin", "wb") as f:
        f.write(b"\1" * (10 * MiB))
    r = reconfigure(clean, "tight", "size", "t", str(4 * MiB))
    assert r.returncode != 0 and "its writes use 10" in r.stderr, r.stderr
    assert clean.prop(path, "UpperSize") == str(16 * MiB)
    for spec, words in [(("nope", "s", "x"), "Unknown Reconfigure spec key 'nope'"),
                        (("size", "b", "true"), "must be of type 't'"),
                        (("size", "t", "0"), "Invalid 'size'"),
                        (("mountpoint", "s", "relative"), "absolute path")]:
        r = reconfigure(clean, "tight", *spec)
        assert r.returncode != 0 and words in r.stderr, (spec, r.stderr)
        assert "Traceback" not in r.stderr and "/run/" not in r.stderr
    r = reconfigure(clean, "nosuch", "size", "t", str(32 * MiB))
    assert r.returncode != 0 and "nosuch" in r.stderr


def test_polkit_refuses_nobody_on_roots_overlay_and_allows_its_own(
        clean: Daemon, bus_image: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    clean.create("roots", bus_image, "size", "t", str(32 * MiB))
    for interactive in (False, True):
        r = reconfigure(clean, "roots", "size", "t", str(64 * MiB), uid=NOBODY,
                        interactive=interactive)
        words = "Access denied" if interactive else "did not allow interactive"
        assert r.returncode != 0 and words in r.stderr, r.stderr
    assert clean.prop(clean.call("GetOverlay", "s", "roots").stdout.split('"')[1],
                      "UpperSize") == str(32 * MiB)
    # nobody may create from granted*.img (conftest.TEST_RULES): so it may resize its own
    root = tmp_path_factory.mktemp("re-granted")
    img = helpers.make_image(root / "granted.img")
    img.chmod(0o666)
    helpers.traversable(root)
    r = clean.call("Create", "sa{sv}", "granted-re", "2", "image", "s", str(img), "size", "t",
                   str(16 * MiB), uid=NOBODY)
    assert r.returncode == 0, r.stderr
    r = reconfigure(clean, "granted-re", "size", "t", str(24 * MiB), uid=NOBODY)
    assert r.returncode == 0, r.stderr
    path = r.stdout and clean.call("GetOverlay", "s", "granted-re").stdout.split('"')[1]
    assert clean.prop(path, "UpperSize") == str(24 * MiB)


def test_overlayctl_reload_applies_the_file(clean: Daemon, bus_image: Path,
                                            tmp_path: Path) -> None:
    f = tmp_path / "rl.overlay"
    f.write_text(f'image = "{bus_image}"\nsize = "32M"\n')
    r = clean.ctl("start", "rl", "--file", str(f))
    assert r.returncode == 0, r.stderr
    assert "commit with 'overlayctl commit rl'" in r.stdout
    f.write_text(f'image = "{bus_image}"\nsize = "96M"\nmount_options = ["noexec"]\n')
    r = clean.ctl("reload", "rl", "--file", str(f))
    assert r.returncode == 0, r.stderr
    assert "the RAM for its writes is 96M now (was 32M)" in r.stdout
    assert "'mount_options'" in r.stdout and "cannot change while it is mounted" in r.stdout
    r = clean.ctl("--json", "reload", "rl", "--file", str(f))
    assert '"changed": []' in r.stdout and '"mount_options"' in r.stdout
    f.write_text('size = "1G"\n')  # a bad file: refused before the bus, exit 65
    r = clean.ctl("reload", "rl", "--file", str(f))
    assert r.returncode == 65 and "image" in r.stderr


# -- SIGHUP: overlayd.conf again, in a standalone daemon -----------------------------------

def wait_for(log: Path, text: str, count: int = 1, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = log.read_text()
        if seen.count(text) >= count:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged: {log.read_text()}")


def test_sighup_rereads_the_configuration_and_a_bad_one_keeps_the_old(
        tmp_path_factory: pytest.TempPathFactory, bus_image: Path) -> None:
    from tests.conftest import kernel_unavailable

    if kernel_unavailable():
        pytest.skip(kernel_unavailable() or "")
    root = tmp_path_factory.mktemp("hup")
    conf = root / "overlayd.conf"
    conf.write_text('default_size = "32M"\n')
    d = start_daemon(root, "--config", str(conf))
    log = root / "overlayd.log"
    try:
        first = d.create("before", bus_image)
        assert d.prop(first, "UpperSize") == str(32 * MiB)

        conf.write_text('default_size = "48M"\nusage_high = 70\n')
        d.proc.send_signal(signal.SIGHUP)
        text = wait_for(log, "Reloaded the configuration")
        assert "default_size, usage_high changed" in text
        second = d.create("after", bus_image)
        assert d.prop(second, "UpperSize") == str(48 * MiB)  # new defaults: new overlays
        assert d.prop(first, "UpperSize") == str(32 * MiB)  # the live one as it was

        conf.write_text('default_size = "64M"\nusage_high = 200\n')  # bad: keeps the old
        d.proc.send_signal(signal.SIGHUP)
        text = wait_for(log, "Cannot reload the configuration")
        assert f"'{conf}'" in text and "'usage_high'" in text
        conf.write_text("this is = = not toml\n")
        d.proc.send_signal(signal.SIGHUP)
        text = wait_for(log, "Cannot reload the configuration", count=2)
        assert d.proc.poll() is None  # still serving
        third = d.create("third", bus_image)
        assert d.prop(third, "UpperSize") == str(48 * MiB)

        # a discard that throws writes away says what (the journal's notice, on stderr here)
        (Path(d.prop(second, "MountPoint")) / "a.txt").write_text("a\n")
        (Path(d.prop(second, "MountPoint")) / "hello.txt").unlink()
        assert d.call("Discard", "sa{sv}", "after", "0").returncode == 0
        text = wait_for(log, "Discarded overlay 'after', throwing away its writes")
        assert "2 entries (1 added, 0 changed, 1 deleted)" in text
    finally:
        d.discard_all()
        err = stop_daemon(d)
    assert "Traceback" not in err
