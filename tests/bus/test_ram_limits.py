"""RAM accounting over a real bus (issue 15): max_total_size refusals through busctl and
overlayctl (exit code 1, one line naming the limit), the minimum size (InvalidSpec, 65),
the Manager's UpperSizeTotal and MaxTotalSize, and the image's free space in
``overlayctl status`` and ``--json``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import Daemon, start_daemon, stop_daemon

MiB = 1 << 20
MANAGER_IFACE = "org.overlayd.Overlayd1.Manager"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from tests.conftest import kernel_unavailable

    if kernel_unavailable():
        pytest.skip(kernel_unavailable() or "")
    root = tmp_path_factory.mktemp("ramlimits")
    conf = root / "overlayd.conf"
    conf.write_text('max_total_size = "96M"\ndefault_size = "16M"\n')
    d = start_daemon(root, "--discard-on-exit", "--config", str(conf))
    yield d
    d.discard_all()
    err = stop_daemon(d)
    assert "Traceback" not in err, err


def manager_prop(d: Daemon, name: str) -> str:
    r = d.busctl("get-property", "org.overlayd.Overlayd1", "/org/overlayd/Overlayd1",
                 MANAGER_IFACE, name, uid=65534)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_max_total_size_through_busctl_and_overlayctl(limited: Daemon, root: Path) -> None:
    d = limited
    img = helpers.make_image(root / "disk.img")
    assert manager_prop(d, "MaxTotalSize") == f"t {96 * MiB}"
    assert manager_prop(d, "UpperSizeTotal") == "t 0"
    try:
        r = d.ctl("create", "first", str(img), "--size", "64M")
        assert r.returncode == 0, r.stderr
        assert manager_prop(d, "UpperSizeTotal") == f"t {64 * MiB}"
        r = d.gdbus("/org/overlayd/Overlayd1", f"{MANAGER_IFACE}.Create", "second",
                    f"{{'image': <'{img}'>, 'size': <uint64 {48 * MiB}>}}")
        assert "org.overlayd.Overlayd1.Error.LimitExceeded" in r.stderr, r.stderr
        assert "max_total_size" in r.stderr and "48M" in r.stderr, r.stderr
        r = d.ctl("create", "second", str(img), "--size", "48M")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert re.search(r"would reserve 48M .* reserve 64M already.* at most 96M "
                         r"together \(max_total_size in overlayd.conf\); 32M is left", r.stderr)
        r = d.ctl("create", "third", str(img))  # the default size, 16M, fits
        assert r.returncode == 0, r.stderr
        assert manager_prop(d, "UpperSizeTotal") == f"t {80 * MiB}"
    finally:
        d.discard_all()
    assert manager_prop(d, "UpperSizeTotal") == "t 0"


def test_a_size_below_the_minimum(limited: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "disk.img")
    r = limited.call("Create", "sa{sv}", "tiny", "2", "image", "s", str(img), "size", "t",
                     "4096")
    assert r.returncode != 0 and "at least 1M" in r.stderr, r.stderr
    r = limited.ctl("create", "tiny", str(img), "--size", "64K")
    assert r.returncode == 65 and "at least 1M (got 64K)" in r.stderr, r.stderr
    assert limited.call("ListOverlays").stdout.strip() == "a(so) 0"


def test_status_shows_the_image_space_beside_the_ram(limited: Daemon, root: Path) -> None:
    d = limited
    img = helpers.make_image(root / "disk.img", size="64M")
    try:
        path = d.create("spaced", img, "size", "t", str(8 * MiB))
        size = int(d.prop(path, "ImageSize"))
        free = int(d.prop(path, "ImageFree"))
        assert 40 * MiB < size <= 64 * MiB and 0 < free < size
        r = d.ctl("status", "spaced")
        assert r.returncode == 0, r.stderr
        assert re.search(r"Writes: .* of 8M in RAM", r.stdout), r.stdout
        line = next(x for x in r.stdout.splitlines() if "Image space:" in x)
        assert re.search(r"Image space: [\d.]+[KMG] free of [\d.]+[KMG]", line), line
        assert "may not fit" not in line
        data = json.loads(d.ctl("status", "spaced", "--json").stdout)
        assert data["ImageSize"] == size and abs(data["ImageFree"] - free) < MiB
        listed = json.loads(d.ctl("list", "--json").stdout)
        assert listed[0]["ImageFree"] == data["ImageFree"]
        r = d.busctl("get-property", "org.overlayd.Overlayd1", path,
                     "org.overlayd.Overlayd1.Overlay", "ImageFree", uid=65534)
        assert r.returncode == 0, "open to everyone, as the other properties"
    finally:
        d.discard_all()
