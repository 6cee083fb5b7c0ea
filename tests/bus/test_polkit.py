"""Authorization with a real polkitd: the matrix of callers, methods and flags, and what a
non-root caller may never do (the session daemon's rules are in conftest.TEST_RULES)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import MANAGER, OVERLAY_IFACE, Daemon, start_daemon, stop_daemon

ROOT, NOBODY, DAEMON_UID, BIN = 0, 65534, 1, 2


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images every test user may read and write: granted.img (rules allow nobody to
    create from it) and plain.img (no rule)."""
    root = tmp_path_factory.mktemp("pk-images")
    out = {}
    for name in ("granted.img", "plain.img"):
        out[name] = helpers.make_image(root / name)
        out[name].chmod(0o666)
    helpers.traversable(root)
    return out


def call(d: Daemon, uid: int, interactive: bool, member: str, *args: str,
         path: str | None = None) -> subprocess.CompletedProcess[str]:
    flag = f"--allow-interactive-authorization={'yes' if interactive else 'no'}"
    if path is None:
        return d.busctl(flag, "call", *MANAGER, member, *args, uid=None if uid == 0 else uid)
    return d.busctl(flag, "call", "org.overlayd.Overlayd1", path, OVERLAY_IFACE, member,
                    *args, uid=None if uid == 0 else uid)


def create(d: Daemon, uid: int, name: str, image: Path, interactive: bool = False
           ) -> subprocess.CompletedProcess[str]:
    return call(d, uid, interactive, "Create", "sa{sv}", name, "1", "image", "s", str(image))


def made_by(d: Daemon, uid: int, name: str, image: Path) -> str:
    r = create(d, uid, name, image)
    assert r.returncode == 0, r.stderr
    return r.stdout.split('"')[1]


def refused(r: subprocess.CompletedProcess[str], interactive: bool) -> bool:
    """Refused the way polkit refuses when no agent can ask: without the interactive flag
    it is InteractiveAuthorizationRequired, telling the caller to allow interaction; with
    it, AccessDenied (busctl shows that well-known error only as "Access denied")."""
    words = "Access denied" if interactive else "did not allow interactive"
    return r.returncode != 0 and words in r.stderr


MUTATIONS = ["Manager.Commit", "Manager.Discard", "Overlay.Commit", "Overlay.Discard"]


def mutate(d: Daemon, uid: int, interactive: bool, what: str, name: str
           ) -> subprocess.CompletedProcess[str]:
    where, member = what.split(".")
    if where == "Manager":
        return call(d, uid, interactive, member, "sa{sv}", name, "0")
    path = d.call("GetOverlay", "s", name).stdout.split('"')[1]
    return call(d, uid, interactive, member, "a{sv}", "0", path=path)


@pytest.mark.parametrize("interactive", [False, True], ids=["plain", "interactive"])
class TestMatrix:
    def test_root_may_do_everything(self, clean: Daemon, images: dict[str, Path],
                                    interactive: bool) -> None:
        assert create(clean, ROOT, "r", images["plain.img"], interactive).returncode == 0
        for what in MUTATIONS:
            if "Discard" in what:
                continue
            assert mutate(clean, ROOT, interactive, what, "r").returncode == 0
        assert mutate(clean, ROOT, interactive, "Overlay.Discard", "r").returncode == 0

    def test_nobody_without_a_rule(self, clean: Daemon, images: dict[str, Path],
                                   interactive: bool) -> None:
        assert refused(create(clean, NOBODY, "plain-x", images["plain.img"], interactive),
                       interactive)
        made_by(clean, NOBODY, "own-x", images["granted.img"])  # create is granted by image
        for what in MUTATIONS:  # commit/discard of own-x: no rule
            assert refused(mutate(clean, NOBODY, interactive, what, "own-x"), interactive), what
        assert '"own-x"' in clean.call("ListOverlays").stdout

    def test_nobody_with_a_rule_that_grants(self, clean: Daemon, images: dict[str, Path],
                                            interactive: bool) -> None:
        for what in MUTATIONS:
            path = made_by(clean, NOBODY, "granted-x", images["granted.img"])
            assert clean.prop(path, "OwnerUID") == str(NOBODY)
            r = mutate(clean, NOBODY, interactive, what, "granted-x")
            assert r.returncode == 0, (what, r.stderr)
            if "Commit" in what:
                clean.call("Discard", "sa{sv}", "granted-x", "0")

    def test_uid_1_when_the_rule_grants_only_nobody(self, clean: Daemon,
                                                    images: dict[str, Path],
                                                    interactive: bool) -> None:
        assert refused(create(clean, DAEMON_UID, "granted-y", images["granted.img"],
                              interactive), interactive)
        made_by(clean, ROOT, "granted-y", images["granted.img"])
        for what in MUTATIONS:
            assert refused(mutate(clean, DAEMON_UID, interactive, what, "granted-y"),
                           interactive), what

    def test_the_owner_and_another_user(self, clean: Daemon, images: dict[str, Path],
                                        interactive: bool) -> None:
        # granted-z belongs to nobody; uid 1 is another user without manage-others.
        made_by(clean, NOBODY, "granted-z", images["granted.img"])
        for what in MUTATIONS:
            r = mutate(clean, DAEMON_UID, interactive, what, "granted-z")
            assert refused(r, interactive), (what, r.stderr)
            assert interactive or "manage-others" in r.stderr
        assert mutate(clean, NOBODY, interactive, "Overlay.Commit", "granted-z").returncode == 0
        # shared-z belongs to nobody; bin may manage it (manage-others granted by rule).
        made_by(clean, ROOT, "shared-z", images["plain.img"])
        for what in MUTATIONS:
            if "Discard" in what:
                continue
            r = mutate(clean, BIN, interactive, what, "shared-z")
            assert r.returncode == 0, (what, r.stderr)
        assert mutate(clean, BIN, interactive, "Manager.Discard", "shared-z").returncode == 0


def test_reads_are_open_to_everyone(clean: Daemon, images: dict[str, Path]) -> None:
    path = made_by(clean, ROOT, "readable", images["plain.img"])
    for uid in (NOBODY, DAEMON_UID, BIN):
        assert '"readable"' in clean.call("ListOverlays", uid=uid).stdout
        assert clean.call("GetOverlay", "s", "readable", uid=uid).returncode == 0
        r = clean.busctl("get-property", "org.overlayd.Overlayd1", path, OVERLAY_IFACE,
                         "MountPoint", uid=uid)
        assert r.returncode == 0
    own = made_by(clean, NOBODY, "granted-own", images["granted.img"])
    r = clean.gdbus(own, f"{OVERLAY_IFACE}.Diff", uid=NOBODY)
    assert r.returncode == 0, "the owner reads its own diff without any action"


def test_without_polkitd_only_root(root: Path, images: dict[str, Path]) -> None:
    d = start_daemon(root, "--discard-on-exit")
    try:
        polkitd = _child_polkitd(d.proc.pid)
        os.kill(polkitd, 15)  # the polkitd this test's own daemon started
        for _ in range(200):
            if d.call("ListOverlays").returncode == 0 and not Path(f"/proc/{polkitd}").exists():
                break
        manager = "org.overlayd.Overlayd1.Manager"
        r = d.gdbus("/org/overlayd/Overlayd1", f"{manager}.Create", "granted-n",
                    f"{{'image': <'{images['granted.img']}'>}}", uid=NOBODY)
        assert "AccessDenied" in r.stderr and "polkit is not available" in r.stderr, r.stderr
        assert create(d, ROOT, "granted-n", images["granted.img"]).returncode == 0
        r = d.gdbus("/org/overlayd/Overlayd1", f"{manager}.Discard", "granted-n", "{}",
                    uid=NOBODY)
        assert "polkit is not available" in r.stderr, r.stderr
    finally:
        assert "Traceback" not in stop_daemon(d)


def _child_polkitd(daemon: int) -> int:
    """The daemon's polkitd: a child of its guard (overlayd.host.guard), a child of it."""
    parents: dict[int, int] = {}
    polkitds = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
        if "(polkitd)" in stat:
            polkitds.append(int(pid))
    for pid in polkitds:
        if parents.get(parents[pid]) == daemon:
            return pid
    raise AssertionError("no polkitd under the daemon")


# -- what a non-root caller may never do, even with every action granted -----------------

def test_no_mount_over_etc(clean: Daemon, images: dict[str, Path]) -> None:
    r = call(clean, NOBODY, False, "Create", "sa{sv}", "granted-etc", "2", "image", "s",
             str(images["granted.img"]), "mountpoint", "s", "/etc")
    assert r.returncode != 0 and "may mount overlays only below" in r.stderr
    assert "/etc" not in [m.split()[0] for m in helpers.mounts_under("/")]


def test_no_setuid_from_its_overlay(clean: Daemon, tmp_path_factory: pytest.TempPathFactory
                                    ) -> None:
    root = tmp_path_factory.mktemp("suid")
    tree = root / "tree"
    tree.mkdir()
    shutil.copy("/usr/bin/id", tree / "id")
    (tree / "id").chmod(0o4755)  # setuid root
    img = helpers.make_image(root / "granted-suid.img", tree)
    img.chmod(0o644)
    helpers.traversable(root)
    path = made_by(clean, NOBODY, "granted-suid", img)
    mp = clean.prop(path, "MountPoint")
    options = clean.run("findmnt", "-n", "-o", "OPTIONS", mp).stdout
    assert "nosuid" in options and "nodev" in options
    helpers.traversable(Path(mp))
    out = clean.run(f"{mp}/id", "-u", uid=NOBODY)
    assert out.returncode == 0 and out.stdout.strip() == str(NOBODY), out


def test_no_image_it_could_not_open_itself(clean: Daemon,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("secret")
    img = helpers.make_image(root / "granted-secret.img")
    img.chmod(0o600)  # root's alone
    helpers.traversable(root)
    r = create(clean, NOBODY, "granted-secret", img)
    assert r.returncode != 0 and "cannot be read by uid 65534" in r.stderr
    r = clean.ctl("--no-ask-password", "create", "granted-secret", str(img), uid=NOBODY)
    assert r.returncode != 0 and "Permission denied" in r.stderr, "overlayctl opens it as nobody"


def test_no_commit_into_an_image_it_cannot_write(clean: Daemon,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    root = tmp_path_factory.mktemp("ro")
    img = helpers.make_image(root / "granted-ro.img")
    img.chmod(0o644)  # readable, not writable, by nobody
    helpers.traversable(root)
    before = helpers.sha256(img)
    path = made_by(clean, NOBODY, "granted-ro", img)
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Commit", "{}", uid=NOBODY)
    assert r.returncode != 0 and "as uid 65534" in r.stderr and "Permission denied" in r.stderr
    assert helpers.sha256(img) == before
