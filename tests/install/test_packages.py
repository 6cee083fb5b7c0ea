"""The Debian package (dpkg-buildpackage, lintian, its maintainer scripts) and the Python
wheel and sdist (python -m build)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.debpkg import REPO, build_deb, the_deb, the_gtk_deb


def sh(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def debout() -> Path:
    return build_deb()


@pytest.fixture(scope="module")
def control(debout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("control")
    r = sh("dpkg-deb", "-e", the_deb(debout), d)
    assert r.returncode == 0, r.stderr
    return d


def deb_files(debout: Path) -> set[str]:
    listing = sh("dpkg-deb", "-c", the_deb(debout)).stdout
    return {line.split()[5].removeprefix(".") for line in listing.splitlines()}


def test_the_deb_has_every_file_in_its_place(debout: Path) -> None:
    files = deb_files(debout)
    for f in ("/usr/bin/overlayd", "/usr/bin/overlayctl",
              "/lib/systemd/system/overlayd.service", "/lib/systemd/system/overlayd@.service",
              "/lib/systemd/system/overlayd-prepare@.service",
              "/usr/lib/systemd/system-generators/overlayd-generator",
              "/usr/libexec/overlayd/overlayd-prepare", "/usr/libexec/overlayd/overlayd-merge",
              "/usr/lib/tmpfiles.d/overlayd.conf", "/usr/lib/systemd/catalog/overlayd.catalog",
              "/usr/share/dbus-1/system.d/org.overlayd.Overlayd1.conf",
              "/usr/share/polkit-1/actions/org.overlayd.overlayd1.policy",
              "/usr/share/doc/overlayd/copyright", "/usr/share/man/man1/overlayctl.1.gz",
              "/usr/share/man/man8/overlayd.8.gz", "/usr/share/man/man5/overlayd.overlay.5.gz",
              "/usr/share/man/man5/overlayd.conf.5.gz",
              "/usr/share/man/man8/overlayd-generator.8.gz",
              "/usr/share/bash-completion/completions/overlayctl", "/etc/overlayd/overlayd.conf",
              "/usr/share/zsh/vendor-completions/_overlayctl",
              "/usr/lib/overlayd/site/overlayd/templates/overlay.mount.in",
              "/usr/lib/overlayd/site/overlayd/ctl.py"):
        assert f in files, f
    # pydantic 2 is bundled; dbus-next, jeepney, systemd and rich are Debian's, not bundled
    assert any(f.startswith("/usr/lib/overlayd/site/pydantic-2.") for f in files)
    for theirs in ("dbus_next", "jeepney", "systemd", "rich"):
        assert f"/usr/lib/overlayd/site/{theirs}/" not in files, theirs


def test_the_deb_depends_on_debians_python_packages(debout: Path) -> None:
    fields = sh("dpkg-deb", "-f", the_deb(debout), "Depends").stdout
    for dep in ("python3-dbus-next", "python3-jeepney", "python3-systemd", "python3-rich",
                "polkitd", "dbus"):
        assert dep in fields, dep


def test_maintainer_scripts_handle_units_tmpfiles_and_the_catalog(control: Path) -> None:
    postinst = (control / "postinst").read_text()
    assert "deb-systemd-helper update-state 'overlayd.service'" in postinst  # not enabled
    assert "systemctl --system daemon-reload" in postinst
    assert "deb-systemd-invoke $_dh_action 'overlayd.service'" in postinst
    assert "systemd-tmpfiles" in postinst and "--create overlayd.conf" in postinst
    assert "journalctl --update-catalog" in postinst
    prerm = (control / "prerm").read_text()
    # the daemon may stop (live overlays outlive it); an instance never is (it discards)
    assert "deb-systemd-invoke stop 'overlayd.service'" in prerm
    assert "overlayd@" not in prerm.replace("overlayd@.service", "")


def test_prerm_names_the_live_overlays_it_leaves_mounted(control: Path,
                                                        tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "findmnt").write_text("#!/bin/sh\necho 'overlayd-web /srv/web'\n"
                                  "echo 'overlay /var/lib/docker/x'\n")
    (fake / "findmnt").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    # no /run/systemd/system check matters: the stop is skipped without DPKG_ROOT="" alone
    r = sh("sh", control / "prerm", "remove", env={**env, "DPKG_ROOT": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    assert "web on /srv/web" in r.stderr
    assert "docker" not in r.stderr
    assert "overlayctl commit NAME" in r.stderr
    (fake / "findmnt").write_text("#!/bin/sh\nexit 0\n")
    r = sh("sh", control / "prerm", "remove", env={**env, "DPKG_ROOT": "/nonexistent"})
    assert r.returncode == 0 and r.stderr == ""
    r = sh("sh", control / "prerm", "upgrade", "0.1.0", env={**env, "DPKG_ROOT": "/x"})
    assert r.returncode == 0 and r.stderr == ""


def test_lintian_reports_no_error_and_only_what_the_readme_lists(debout: Path) -> None:
    report = (debout / "lintian.txt").read_text()
    tags = {line.split()[2] for line in report.splitlines()
            if line[:2] in ("E:", "W:", "I:", "P:", "X:") and len(line.split()) > 2}
    errors = [line for line in report.splitlines() if line.startswith("E:")]
    assert not errors, report
    listed = (REPO / "debian/README.source").read_text()
    for tag in tags:
        assert f"`{tag}`" in listed, f"lintian's {tag} is not explained in debian/README.source"


GTK_FILES = {
    "/usr/bin/overlayd-gtk": 0o755,
    "/usr/share/overlayd-gtk/overlayd/__init__.py": 0o644,
    "/usr/share/overlayd-gtk/overlayd/desktop/__init__.py": 0o644,
    "/usr/share/overlayd-gtk/overlayd/desktop/__main__.py": 0o644,
    "/usr/share/overlayd-gtk/overlayd/desktop/app.py": 0o644,
    "/usr/share/overlayd-gtk/overlayd/desktop/text.py": 0o644,
    "/usr/share/applications/org.overlayd.Overlays.desktop": 0o644,
    "/usr/share/metainfo/org.overlayd.Overlays.metainfo.xml": 0o644,
    "/usr/share/icons/hicolor/scalable/apps/org.overlayd.Overlays.svg": 0o644,
    "/usr/share/man/man1/overlayd-gtk.1.gz": 0o644,
    "/usr/share/doc/overlayd-gtk/copyright": 0o644,
    "/usr/share/doc/overlayd-gtk/changelog.gz": 0o644,
}


def deb_modes(deb: Path) -> dict[str, int]:
    """Every regular file of the .deb and its permission bits."""
    listing = sh("dpkg-deb", "-c", deb).stdout
    modes = {}
    for line in listing.splitlines():
        perms, *_, name = line.split(maxsplit=5)
        if perms.startswith("-"):
            bits = 0
            for i, c in enumerate(perms[1:]):
                bits |= (c != "-") << (8 - i)
            modes[name.removeprefix(".")] = bits
    return modes


def test_the_gtk_deb_holds_exactly_the_apps_files(debout: Path) -> None:
    assert deb_modes(the_gtk_deb(debout)) == GTK_FILES
    # the daemon's package leaves the app to overlayd-gtk
    assert not any("/desktop" in f for f in deb_files(debout))


def test_the_gtk_deb_depends_on_python_gtk_and_libadwaita(debout: Path) -> None:
    deb = the_gtk_deb(debout)
    depends = sh("dpkg-deb", "-f", deb, "Depends").stdout.strip()
    assert [d.strip() for d in depends.split(",")] == [
        "python3 (>= 3.11)", "python3-gi", "gir1.2-gtk-4.0", "gir1.2-adw-1"]
    assert sh("dpkg-deb", "-f", deb, "Recommends").stdout.strip() == "overlayd"
    assert sh("dpkg-deb", "-f", deb, "Architecture").stdout.strip() == "all"


def test_lintian_reports_nothing_for_the_gtk_deb(debout: Path) -> None:
    report = (debout / "lintian.txt").read_text()
    (changes,) = debout.glob("overlayd_*.changes")
    assert "overlayd-gtk_" in changes.read_text()  # lintian checked it
    assert not [line for line in report.splitlines()
                if line.split(":", 1)[-1].strip().startswith("overlayd-gtk")], report


def test_the_installed_launcher_prints_the_apps_help_without_a_display(
        debout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = sh("dpkg-deb", "-x", the_gtk_deb(debout), root)
    assert r.returncode == 0, r.stderr
    launcher = root / "usr/bin/overlayd-gtk"
    text = launcher.read_text()
    assert "/usr/share/overlayd-gtk" in text
    # the launcher as installed, its private directory moved to where it was unpacked
    launcher.write_text(text.replace("/usr/share/overlayd-gtk", f"{root}/usr/share/overlayd-gtk"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH")}
    r = sh(launcher, "--help", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "overlayd-gtk" in r.stdout and "--help" in r.stdout
    where = sh("/usr/bin/python3", "-c", "import overlayd.desktop.text as t; print(t.__file__)",
               env={**env, "PYTHONPATH": f"{root}/usr/share/overlayd-gtk"}, cwd=tmp_path)
    assert where.stdout.strip() == f"{root}/usr/share/overlayd-gtk/overlayd/desktop/text.py"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO,
           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_the_wheel_has_the_templates_and_no_demo_script(dists: Path) -> None:
    (whl,) = dists.glob("overlayd-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = z.read(entry).decode()
    for t in ("overlay.mount.in", "overlay-rw.mount.in", "overlay-lower.mount.in"):
        assert f"overlayd/templates/{t}" in names
    assert "overlayctl = overlayd.ctl:main" in scripts
    assert "overlayd-demo" not in scripts


def test_the_sdist_has_the_whole_source(dists: Path) -> None:
    (sdist,) = dists.glob("overlayd-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("LICENSE", "debian/rules", "debian/control", "units/overlayd.service",
              "dbus/org.overlayd.Overlayd1.conf", "polkit/org.overlayd.overlayd1.policy",
              "packaging/tmpfiles.d/overlayd.conf", "overlayd/templates/overlay.mount.in",
              "tools/install.sh"):
        assert f in names, f
    assert not any(n.startswith("debian/wheels") for n in names)


def test_overlayctl_render_works_from_a_wheel_install(dists: Path, tmp_path: Path) -> None:
    (whl,) = dists.glob("overlayd-*.whl")
    site = tmp_path / "site"
    r = sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
           "--target", site, whl)
    assert r.returncode == 0, r.stderr
    (tmp_path / "web.overlay").write_text(
        f'image = "{tmp_path}/web.img"\nsize = "64M"\nboot = true\n'
        f'mountpoint = "{tmp_path}/srv/web"\n')
    # the wheel's package first, this venv's dependencies after; run from elsewhere than REPO
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *deps])}
    r = sh(sys.executable, "-I", "-c",
           "import sys; sys.path[:0] = __import__('os').environ['PYTHONPATH'].split(':');"
           "import overlayd.ctl; sys.argv[0] = 'overlayctl'; sys.exit(overlayd.ctl.main())",
           "render", "web", "--file", tmp_path / "web.overlay", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "None" not in r.stdout
    assert "[Mount]" in r.stdout and f"{tmp_path}/srv/web" in r.stdout
    imported = sh(sys.executable, "-I", "-c",
                  "import sys; sys.path[:0] = __import__('os').environ['PYTHONPATH'].split(':');"
                  "import overlayd.render as r; print(r.__file__)", env=env, cwd=tmp_path)
    assert imported.stdout.startswith(str(site)), imported.stdout
