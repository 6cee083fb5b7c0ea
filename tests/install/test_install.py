"""make install, and systemd-analyze verify on what it installed.

Installed with PREFIX under a temporary directory (no DESTDIR), so the units' Exec paths
point at commands that exist and systemd-analyze can check them on this machine, which
runs no systemd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from overlayd import overlayfile

REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    root = tmp_path_factory.mktemp("install")
    pre = root / "usr"
    fixed = {"DBUSDIR": pre / "share/dbus-1", "POLKITDIR": pre / "share/polkit-1",
             "CATALOGDIR": pre / "lib/systemd/catalog",
             "INITRAMFSDIR": pre / "share/initramfs-tools",
             "DRACUTDIR": pre / "lib/dracut/modules.d"}  # elsewhere fixed system places
    r = sh("bash", REPO / "tools/install.sh", env={**os.environ, "PREFIX": str(pre),
                                                    "SYSCONFDIR": str(root / "etc"),
                                                    "PIP": str(REPO / ".venv/bin/pip"),
                                                    **{k: str(v) for k, v in fixed.items()}},
           cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return pre


def test_every_file_lands_in_its_place(prefix: Path) -> None:
    for rel in ("bin/overlayd", "bin/overlayctl", "libexec/overlayd/overlayd-prepare",
                "lib/systemd/system-generators/overlayd-generator",
                "lib/systemd/system/overlayd.service", "lib/systemd/system/overlayd@.service",
                "lib/systemd/system/overlayd-prepare@.service",
                "share/dbus-1/system.d/org.overlayd.Overlayd1.conf",
                "share/dbus-1/system-services/org.overlayd.Overlayd1.service",
                "share/dbus-1/interfaces/org.overlayd.Overlayd1.Manager.xml",
                "share/polkit-1/actions/org.overlayd.overlayd1.policy",
                "lib/tmpfiles.d/overlayd.conf", "lib/systemd/catalog/overlayd.catalog",
                "share/overlayd/overlay.schema.json", "share/doc/overlayd/example.overlay",
                "share/man/man1/overlayctl.1", "share/man/man8/overlayd.8",
                "share/man/man5/overlayd.conf.5", "share/man/man5/overlayd.overlay.5",
                "share/man/man8/overlayd-generator.8",
                "lib/overlayd/site/overlayd/templates/overlay.mount.in"):
        assert (prefix / rel).is_file(), rel
    for exe in ("bin/overlayd", "bin/overlayctl",
                "lib/systemd/system-generators/overlayd-generator"):
        assert os.access(prefix / exe, os.X_OK)
    unit = (prefix / "lib/systemd/system/overlayd.service").read_text()
    assert f"ExecStart={prefix}/bin/overlayd\n" in unit  # PREFIX rewrites the paths


def test_installed_commands_run_from_their_private_site(prefix: Path) -> None:
    r = sh(prefix / "bin/overlayctl", "schema")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == overlayfile.json_schema()
    assert sh(prefix / "bin/overlayd", "--version").stdout.startswith("overlayd ")
    assert sh(prefix / "libexec/overlayd/overlayd-prepare").returncode == 2  # usage


def test_the_root_on_an_overlay_lands_in_its_place(prefix: Path) -> None:
    for rel in ("share/initramfs-tools/hooks/overlayd",
                "share/initramfs-tools/scripts/local-bottom/overlayd",
                "lib/dracut/modules.d/90overlayd/module-setup.sh",
                "lib/dracut/modules.d/90overlayd/overlayd-pre-pivot.sh",
                "lib/dracut/modules.d/90overlayd/overlayd-shutdown.sh",
                "share/overlayd/root/lib.sh", "share/overlayd/root/shutdown",
                "libexec/overlayd/overlayd-merge"):
        assert os.access(prefix / rel, os.R_OK), rel
    assert (prefix.parent / "etc/update-motd.d/50-overlayd-root").is_file()
    # PREFIX rewrites where the hook finds the library and the merge program
    hook = (prefix / "share/initramfs-tools/hooks/overlayd").read_text()
    assert f"LIB={prefix}/share/overlayd/root/lib.sh" in hook
    assert f"MERGE={prefix}/libexec/overlayd/overlayd-merge" in hook
    merge = prefix / "libexec/overlayd/overlayd-merge"
    assert merge.read_text().splitlines()[0].endswith(" -IS")  # no site: the exitrd has none
    assert sh(merge).returncode == 2  # usage
    listed = sh(merge, "--list-files").stdout.split()
    assert f"{prefix}/lib/overlayd/site/overlayd/offline.py" in listed
    assert not [f for f in listed if "pydantic" in f or "dbus_next" in f]


def _verify(prefix: Path, *units: Path) -> None:
    # with the man pages checked: Documentation= names only pages that were installed
    r = sh("systemd-analyze", "verify", *units,
           env={**os.environ, "MANPATH": str(prefix / "share/man")})
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_systemd_analyze_verify_shipped_units(prefix: Path) -> None:
    d = prefix / "lib/systemd/system"
    _verify(prefix, d / "overlayd.service", d / "overlayd@.service", d / "overlayd@demo.service",
            d / "overlayd-prepare@.service", d / "overlayd-prepare@demo.service")


def test_systemd_analyze_verify_rendered_mount_units(prefix: Path, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/web-1.overlay").write_text(  # a space in the image path: quoted
        f'image = "{tmp_path}/my images/web.img"\nsize = "64M"\nboot = true\n'
        f'mountpoint = "{tmp_path}/srv/web"\nmount_options = ["nodev"]\n')
    out = tmp_path / "units"
    out.mkdir()
    r = sh(prefix / "bin/overlayctl", "render", "web-1", "--file", tmp_path / "etc/web-1.overlay",
           "--directory", out)
    assert r.returncode == 0, r.stderr
    shutil.copy(prefix / "lib/systemd/system/overlayd-prepare@.service", out)
    mounts = sorted(out.glob("*.mount"))
    assert len(mounts) == 3
    _verify(prefix, *mounts)


def test_generator_runs_as_systemd_runs_it(prefix: Path, tmp_path: Path) -> None:
    """Called with systemd's three directories, it succeeds (this machine's boot overlays,
    if any, are its own business; the container test checks real ones)."""
    dirs = [tmp_path / d for d in ("normal", "early", "late")]
    for d in dirs:
        d.mkdir()
    r = sh(prefix / "lib/systemd/system-generators/overlayd-generator", *dirs)
    assert r.returncode == 0, r.stderr
    assert not [p for d in ("early", "late") for p in (tmp_path / d).iterdir()]


def test_destdir_and_another_prefix(tmp_path: Path) -> None:
    """PREFIX moves the commands and units; the bus policy, polkit actions and catalog stay
    where dbus-daemon, polkitd and journalctl read them."""
    r = sh("bash", REPO / "tools/install.sh", cwd=REPO,
           env={**os.environ, "DESTDIR": str(tmp_path), "PREFIX": "/usr/local",
                "PIP": str(REPO / ".venv/bin/pip")})
    assert r.returncode == 0, r.stdout + r.stderr
    unit = (tmp_path / "usr/local/lib/systemd/system/overlayd.service").read_text()
    assert "ExecStart=/usr/local/bin/overlayd\n" in unit
    assert "sys.path.insert(0, \"/usr/local/lib/overlayd/site\")" in \
        (tmp_path / "usr/local/bin/overlayctl").read_text()
    for rel in ("usr/share/dbus-1/system.d/org.overlayd.Overlayd1.conf",
                "usr/share/polkit-1/actions/org.overlayd.overlayd1.policy",
                "usr/lib/systemd/catalog/overlayd.catalog", "etc/overlayd"):
        assert (tmp_path / rel).exists(), rel
