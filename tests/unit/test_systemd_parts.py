"""The systemd-facing pure parts: events and catalog, journal fields, sd_notify, .overlay
files and their schema, unit rendering, the generator, and the shipped unit files."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from overlayd import boot, overlayfile, render
from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec, NoSuchOverlay
from overlayd.events import MESSAGE_IDS, NOTICE, Event
from overlayd.log import journal_fields, setup_logging
from overlayd.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[2]
MEMORY = 8 << 30  # the machine's memory, as render is told it


# -- events and the catalog -------------------------------------------------------------

def test_every_event_has_a_distinct_message_id() -> None:
    assert set(MESSAGE_IDS) == set(Event)
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_catalog_explains_exactly_our_message_ids() -> None:
    text = (REPO / "packaging/catalog/overlayd.catalog").read_text()
    entries = re.findall(r"^-- ([0-9a-f]{32})$", text, re.MULTILINE)
    assert sorted(entries) == sorted(MESSAGE_IDS.values())
    for block in text.split("\n-- ")[1:]:
        assert "\nSubject: " in block and "\nDefined-By: overlayd" in block


def _record(level: int, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("overlayd", level, "f.py", 1, "msg %s", ("x",), None)
    rec.__dict__.update(extra)
    return rec


def test_journal_fields_carry_message_id_priority_and_our_fields_only() -> None:
    f = journal_fields(_record(NOTICE, OVERLAYD_EVENT=Event.DENIED, OVERLAYD_NAME="demo",
                               OVERLAYD_UID=65534, OVERLAYD_IMAGE=None, other="no"))
    assert f["MESSAGE_ID"] == MESSAGE_IDS[Event.DENIED]
    assert f["PRIORITY"] == "5" and f["SYSLOG_IDENTIFIER"] == "overlayd"
    assert f["OVERLAYD_NAME"] == "demo" and f["OVERLAYD_UID"] == "65534"
    assert "OVERLAYD_IMAGE" not in f and "other" not in f and "ARGS" not in f
    assert all(k == k.upper() for k in f)
    assert journal_fields(_record(logging.INFO))["PRIORITY"] == "6"
    assert "MESSAGE_ID" not in journal_fields(_record(logging.INFO))
    assert journal_fields(_record(logging.ERROR))["PRIORITY"] == "3"


def test_journal_handler_goes_through_systemd_journal_send(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real systemd.journal.send formats the fields; only sendv (the socket) is faked."""
    from systemd import journal

    from overlayd.log import JournalHandler

    sent: list[tuple[bytes | str, ...]] = []
    monkeypatch.setattr(journal, "sendv", lambda *args: sent.append(args))
    handler = JournalHandler()
    handler.handle(_record(NOTICE, OVERLAYD_EVENT=Event.FAILED, OVERLAYD_NAME="demo",
                           OVERLAYD_UID=0, OVERLAYD_SECONDS="0.5"))
    assert len(sent) == 1
    lines = {str(a).split("=", 1)[0]: str(a).split("=", 1)[1] for a in sent[0]}
    assert lines["MESSAGE"] == "msg x" and lines["PRIORITY"] == "5"
    assert lines["MESSAGE_ID"] == MESSAGE_IDS[Event.FAILED] and lines["CODE_LINE"] == "1"
    assert lines["OVERLAYD_UID"] == "0" and lines["OVERLAYD_NAME"] == "demo"


def test_logging_goes_to_stderr_without_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # not our stderr
    setup_logging()
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1 and isinstance(handlers[0], logging.StreamHandler)


# -- sd_notify ------------------------------------------------------------------------------

def test_the_status_line_follows_changes_without_walking_all_overlays() -> None:
    from types import SimpleNamespace

    from overlayd.daemon import LiveNames, status_line, status_text

    recs = {n: SimpleNamespace(name=n) for n in ("m", "c")}
    manager = SimpleNamespace(list=lambda: [recs[n] for n in sorted(recs)])
    live = LiveNames(manager)  # type: ignore[arg-type]
    assert status_text(live.names) == status_line(manager) == "2 overlays live: c, m"  # type: ignore[arg-type]
    steps = [("a", True), ("a", True), ("z", True), ("c", False), ("q", True), ("zz", False),
             *((f"n{i}", True) for i in range(9)), ("m", False)]
    for name, there in steps:
        before = list(live.names)
        if there:
            recs[name] = SimpleNamespace(name=name)
        else:
            recs.pop(name, None)
        sent = live.changed(name, recs.get(name))
        assert sent == (live.names != before), name  # a state change is not sent again
        assert status_text(live.names) == status_line(manager), name  # type: ignore[arg-type]
    assert status_text([]) == "No overlays live"
    assert status_text(live.names).endswith(", ...")


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        n.ready("1 overlay live: demo")
        assert s.recv(100) == b"READY=1\nSTATUS=1 overlay live: demo"
        n.stopping("Stopping")
        assert s.recv(100) == b"STOPPING=1\nSTATUS=Stopping"
        assert n.watchdog_usec == 2_000_000


def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    import asyncio

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.setblocking(False)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})  # ping every 20 ms

        async def run_for_a_while() -> None:
            task = asyncio.ensure_future(n.watchdog())
            await asyncio.sleep(0.1)
            task.cancel()

        asyncio.run(run_for_a_while())
        pings = []
        while True:
            try:
                pings.append(s.recv(100))
            except BlockingIOError:
                break
    assert len(pings) >= 2 and set(pings) == {b"WATCHDOG=1"}  # no upper bound: load varies


def test_notifier_outside_systemd_does_nothing() -> None:
    n = Notifier({})
    assert not n.enabled and n.send("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "@abc"}).address == "\0abc"
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5",
                     "WATCHDOG_PID": "1"}).watchdog_usec == (5 if os.getpid() == 1 else 0)


# -- .overlay files ----------------------------------------------------------------------------

def _write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.overlay"
    p.write_text(text)
    return p


def test_overlay_file_parses_like_the_bus_spec(tmp_path: Path) -> None:
    p = _write(tmp_path, "demo", 'image = "/img"\nsize = "64M"\nmount_options = ["noatime"]\n'
                                 'on_stop = "commit"\nboot = true\n')
    f = overlayfile.load(p)
    assert (f.on_stop, f.boot, f.size) == ("commit", True, 64 << 20)
    spec = f.spec("demo")
    assert (spec.name, spec.image, spec.mount_options) == ("demo", "/img", ("noatime",))


@pytest.mark.parametrize(("text", "words"), [
    ('image = "/img"\nname = "x"\n', "Unknown setting 'name'"),
    ('image = "/img"\non_stop = "keep"\n', "on_stop"),
    ('size = "1G"\n', "'image' is required"),
    ('image = "img"\n', "absolute path"),
    ('image = "/img"\nsize = "lots"\n', "is not a size"),
    ('image = "/img"\nmount_options = ["suid"]\n', "not allowed"),
    ('image = "/img"\nboot = "yes please"\n', "boot"),
    ('image = "/img\n', "not valid TOML"),
])
def test_overlay_file_errors_name_the_file_and_setting(tmp_path: Path, text: str,
                                                       words: str) -> None:
    p = _write(tmp_path, "bad", text)
    with pytest.raises(InvalidSpec) as e:
        overlayfile.load(p)
    assert str(p) in str(e.value) and words in str(e.value)


def test_search_path_first_wins_and_missing_names_every_place(tmp_path: Path) -> None:
    etc, run, lib = tmp_path / "etc", tmp_path / "run", tmp_path / "lib"
    _write(lib, "a", 'image = "/lib-a"\n')
    _write(run, "a", 'image = "/run-a"\n')
    _write(lib, "b", 'image = "/lib-b"\n')
    etc.mkdir()
    path, f = overlayfile.load_named("a", (etc, run, lib))
    assert path == run / "a.overlay" and f.image == "/run-a"
    assert overlayfile.all_files((etc, run, lib)) == {"a": run / "a.overlay",
                                                      "b": lib / "b.overlay"}
    with pytest.raises(NoSuchOverlay) as e:
        overlayfile.find("c", (etc, run, lib))
    assert str(etc) in str(e.value) and str(lib) in str(e.value)
    with pytest.raises(InvalidSpec):
        overlayfile.find("../x", (etc,))


def test_a_link_to_dev_null_masks_a_file_further_down(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    _write(lib, "a", 'image = "/lib-a"\nboot = true\n')
    etc.mkdir()
    (etc / "a.overlay").symlink_to("/dev/null")
    with pytest.raises(NoSuchOverlay, match="masked"):
        overlayfile.find("a", (etc, lib))
    assert overlayfile.all_files((etc, lib)) == {}


def test_shipped_schema_is_the_models_and_the_example_parses() -> None:
    shipped = (REPO / "packaging/overlay.schema.json").read_text()
    assert shipped == overlayfile.json_schema_text(), "regenerate: overlayctl schema"
    schema = json.loads(shipped)
    assert schema["additionalProperties"] is False and schema["required"] == ["image"]
    assert set(schema["properties"]) == {"image", "fstype", "mountpoint", "size",
                                         "mount_options", "layers", "on_stop", "boot",
                                         "upper", "compressor", "partition", "engine"}
    overlayfile.load(REPO / "packaging/example.overlay")


# -- rendering and the generator ------------------------------------------------------------

@pytest.mark.parametrize("text", ["demo", "a-b", "x_y.z", "-lead", ".dot", "sp ace", "ü"])
def test_escape_matches_systemd_escape(text: str) -> None:
    want = subprocess.run(["systemd-escape", "--", text], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert render.escape(text) == want


@pytest.mark.parametrize("path", ["/", "/srv/demo 1", "/run/overlayd/a-b/lower", "/x//y/"])
def test_escape_path_matches_systemd_escape(path: str) -> None:
    want = subprocess.run(["systemd-escape", "--path", "--", path], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert render.escape_path(path) == want


def test_render_gives_three_layers_from_the_model(tmp_path: Path) -> None:
    p = _write(tmp_path, "web-1", 'image = "/var/img/web.img"\nsize = "64M"\n'
                                  'mount_options = ["nodev"]\nfstype = "ext4"\n')
    cfg = DaemonConfig()
    u = render.render("web-1", overlayfile.load(p), p, cfg, MEMORY)
    names = [n for n, _ in u.all()]
    assert names == ["run-overlayd-web\\x2d1-lower.mount", "run-overlayd-web\\x2d1-rw.mount",
                     "run-overlayd-mnt-web\\x2d1.mount"]
    lower, tmpfs, merged = (t for _, t in u.all())
    assert "What=/var/img/web.img\n" in lower and "Options=ro,loop\n" in lower
    assert "Type=ext4\n" in lower and 'RequiresMountsFor="/var/img/web.img"\n' in lower
    assert "What=overlayd-web-1\n" in tmpfs and f"size={64 << 20}," in tmpfs
    assert "Requires=overlayd-prepare@web\\x2d1.service\n" in merged
    assert ("Options=lowerdir=/run/overlayd/web-1/lower,upperdir=/run/overlayd/web-1/rw/upper,"
            "workdir=/run/overlayd/web-1/rw/work,redirect_dir=off,index=off,metacopy=off,"
            "xino=off,nodev\n") in merged
    assert "@" not in lower.replace("overlayd-prepare@", "")
    block = render.render("web-1", overlayfile.OverlayFile(image="/dev/vdb"), p, cfg, MEMORY)
    assert "Options=ro\n" in block.lower[1] and "RequiresMountsFor" not in block.lower[1]
    assert "Type=" not in block.lower[1]  # no fstype: mount(8) detects it


def test_render_refuses_values_that_would_break_a_unit(tmp_path: Path) -> None:
    bad = overlayfile.OverlayFile(image="/img", mountpoint="/srv/a%b")
    with pytest.raises(InvalidSpec, match="cannot go into a mount unit"):
        render.render("x", bad, tmp_path / "x.overlay", DaemonConfig(), MEMORY)
    with pytest.raises(InvalidSpec, match=r"'\.' or '\.\.'"):
        render.escape_path("/srv/../etc")
    for where in ("/", "/run/overlayd/other/lower"):
        with pytest.raises(InvalidSpec, match="mount point"):
            render.render("x", overlayfile.OverlayFile(image="/img", mountpoint=where),
                          tmp_path / "x.overlay", DaemonConfig(), MEMORY)


def test_render_sizes_the_tmpfs_as_create_does(tmp_path: Path) -> None:
    from overlayd.errors import LimitExceeded

    cfg = DaemonConfig(default_size="2G", max_size="1G")
    plain = overlayfile.OverlayFile(image="/img")
    assert f"size={1 << 30}," in render.render("x", plain, tmp_path, cfg, MEMORY).tmpfs[1]
    with pytest.raises(LimitExceeded, match="max_size"):
        render.render("x", overlayfile.OverlayFile(image="/img", size="2G"), tmp_path, cfg,
                      MEMORY)


def test_generator_writes_boot_overlays_only_and_skips_bad_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc, out = tmp_path / "etc", tmp_path / "out"
    out.mkdir()
    _write(etc, "up", 'image = "/img/up.img"\nboot = true\n')
    _write(etc, "later", 'image = "/img/later.img"\n')
    _write(etc, "broken", 'image = "/img/b.img"\nboot = true\nbogus = 1\n')
    _write(etc, "dir", f'image = "{tmp_path}"\nboot = true\n')
    done = boot.generate(out, DaemonConfig(), (etc,))
    assert done == ["up"]
    assert sorted(p.name for p in out.iterdir()) == [
        "local-fs.target.wants", "run-overlayd-mnt-up.mount", "run-overlayd-up-lower.mount",
        "run-overlayd-up-rw.mount"]
    link = out / "local-fs.target.wants" / "run-overlayd-mnt-up.mount"
    assert os.readlink(link) == "../run-overlayd-mnt-up.mount"
    err = capsys.readouterr().err
    assert "broken.overlay" in err and "bogus" in err and "dir.overlay" in err
    assert boot.generate(out, DaemonConfig(runtime_dir=tmp_path), (etc,)) == []


# -- the shipped unit files ---------------------------------------------------------------------

def _settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (REPO / "units" / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            found.setdefault(k, []).append(v)
    return found


def test_daemon_unit_is_notify_with_watchdog_and_no_mount_namespace() -> None:
    s = _settings("overlayd.service")
    assert s["Type"] == ["notify"] and s["BusName"] == ["org.overlayd.Overlayd1"]
    assert s["Restart"] == ["on-failure"] and "WatchdogSec" in s
    namespacing = {"PrivateMounts", "ProtectSystem", "ProtectHome", "PrivateTmp",
                   "PrivateDevices", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths",
                   "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
                   "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                   "ProtectProc", "ProcSubset", "PrivateNetwork", "PrivateUsers", "MountFlags",
                   "RootDirectory", "RootImage", "RuntimeDirectory", "DynamicUser",
                   "PrivateIPC", "NetworkNamespacePath", "LogNamespace"}
    assert not namespacing & set(s)
    assert any("@mount" in v for v in s["SystemCallFilter"])
    assert "/dev/loop-control rw" in s["DeviceAllow"] and s["NoNewPrivileges"] == ["yes"]


def test_instance_unit_does_not_stop_with_the_daemon() -> None:
    s = _settings("overlayd@.service")
    assert "Requires" not in s and "BindsTo" not in s and "PartOf" not in s
    assert s["Wants"] == ["overlayd.service"]
    assert [v.split()[-2:] for v in s["ExecStart"] + s["ExecReload"] + s["ExecStop"]] == [
        ["start", "%i"], ["reload", "%i"], ["stop", "%i"]]
    # reload re-reads NAME.overlay and never commits; status says how to commit
    assert "overlayctl commit %i" in s["Description"][0]


def test_daemon_unit_reloads_its_configuration_on_sighup() -> None:
    s = _settings("overlayd.service")
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and s["Type"] == ["notify"]


def test_bus_activation_points_at_the_unit() -> None:
    text = (REPO / "dbus/org.overlayd.Overlayd1.service").read_text()
    assert "SystemdService=overlayd.service\n" in text


def test_generator_orders_the_commit_of_a_boot_overlay_before_its_unmount(
        tmp_path: Path) -> None:
    """on_stop = "commit" on a boot overlay: overlayd@NAME is pulled in at boot and ordered
    after the three mounts, so at shutdown it stops (commits) before they are unmounted."""
    etc, out, units = tmp_path / "etc", tmp_path / "out", tmp_path / "lib/systemd/system"
    out.mkdir()
    units.mkdir(parents=True)
    _write(etc, "keep-1", 'image = "/img/k.img"\nboot = true\non_stop = "commit"\n')
    _write(etc, "toss", 'image = "/img/t.img"\nboot = true\n')
    assert boot.generate(out, DaemonConfig(), (etc,), unit_dir=units) == ["keep-1", "toss"]
    dropin = out / "overlayd@keep\\x2d1.service.d" / "50-boot-overlay.conf"
    text = dropin.read_text()
    assert "After=run-overlayd-keep\\x2d1-lower.mount run-overlayd-keep\\x2d1-rw.mount " \
        "run-overlayd-mnt-keep\\x2d1.mount" in text
    assert "Wants=run-overlayd-mnt-keep\\x2d1.mount" in text
    link = out / "multi-user.target.wants" / "overlayd@keep\\x2d1.service"
    assert os.readlink(link) == str(units / "overlayd@.service")
    assert not (out / "overlayd@toss.service.d").exists(), "on_stop = discard: no hook"
    gen = tmp_path / "lib/systemd/system-generators/overlayd-generator"
    gen.parent.mkdir()
    assert boot.unit_dir_of(str(gen)) == units
    assert boot.unit_dir_of("/elsewhere/overlayd-generator") == boot.DEFAULT_UNIT_DIR


def test_the_generator_starts_the_daemon_on_a_protected_root(tmp_path: Path) -> None:
    from overlayd.boot import want_daemon_for_root

    out = tmp_path / "gen"
    out.mkdir()
    mark = tmp_path / "mode"
    assert not want_daemon_for_root(out, mark)
    assert not (out / "multi-user.target.wants").exists()
    mark.write_text("tmpfs\n")
    assert want_daemon_for_root(out, mark) and want_daemon_for_root(out, mark)  # idempotent
    link = out / "multi-user.target.wants/overlayd.service"
    assert os.readlink(link) == str(boot.DEFAULT_UNIT_DIR / "overlayd.service")
