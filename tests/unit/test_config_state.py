"""The daemon's configuration (overlayd.config) and state records (overlayd.state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from overlayd.config import DEFAULT_CONFIG, DaemonConfig, load_config
from overlayd.errors import InvalidSpec
from overlayd.model import (
    RECORD_VERSION,
    CommitPhase,
    Lower,
    LowerKind,
    Merged,
    Overlay,
    OverlayState,
    Upper,
)
from overlayd.state import RecordError, RecordTooNew, dump_record, load_record

GiB = 1 << 30
MiB = 1 << 20


# --- DaemonConfig ------------------------------------------------------------------------------

def test_defaults() -> None:
    cfg = DaemonConfig()
    assert cfg.runtime_dir == Path("/run/overlayd")
    assert cfg.mount_root is None
    assert cfg.mount_root_dir == Path("/run/overlayd/mnt")
    assert cfg.default_size == GiB
    assert cfg.max_size == 0
    assert cfg.max_overlays == 1024


def test_default_config_path() -> None:
    assert Path("/etc/overlayd/overlayd.conf") == DEFAULT_CONFIG


def test_runtime_dir_is_not_tmp() -> None:
    assert not str(DaemonConfig().runtime_dir).startswith(("/tmp", "/var/tmp"))


def test_mount_root_dir_follows_runtime_dir() -> None:
    assert DaemonConfig(runtime_dir=Path("/run/x")).mount_root_dir == Path("/run/x/mnt")


def test_mount_root_dir_explicit() -> None:
    cfg = DaemonConfig(mount_root=Path("/srv/overlays"))
    assert cfg.mount_root_dir == Path("/srv/overlays")


@pytest.mark.parametrize(("value", "expected"), [("2G", 2 * GiB), ("512M", 512 * MiB),
                                                 ("1.5G", GiB + GiB // 2), (4 * MiB, 4 * MiB),
                                                 ("4194304", 4 * MiB)])
def test_sizes_as_strings(value: Any, expected: int) -> None:
    cfg = DaemonConfig(default_size=value, max_size=value)
    assert cfg.default_size == expected
    assert cfg.max_size == expected


def test_config_is_frozen() -> None:
    cfg = DaemonConfig()
    with pytest.raises(ValidationError):
        cfg.max_size = 5  # type: ignore[misc]


def test_max_overlays_at_least_one() -> None:
    with pytest.raises(ValidationError):
        DaemonConfig(max_overlays=0)


# --- load_config -------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "overlayd.conf") == DaemonConfig()


def test_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf", 'runtime_dir = "/run/ov"\ndefault_size = "2G"\n'
                                             "max_overlays = 7\n")
    cfg = load_config(conf)
    assert cfg.runtime_dir == Path("/run/ov")
    assert cfg.mount_root_dir == Path("/run/ov/mnt")
    assert cfg.default_size == 2 * GiB
    assert cfg.max_overlays == 7
    assert cfg.max_size == 0


def test_drop_ins_win_key_by_key(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf",
                 'default_size = "2G"\nmax_size = "8G"\nmax_overlays = 7\n')
    write(tmp_path / "overlayd.conf.d" / "10-size.conf", 'default_size = "512M"\n')
    write(tmp_path / "overlayd.conf.d" / "20-more.conf", "max_overlays = 9\n")
    write(tmp_path / "overlayd.conf.d" / "30-last.conf", "max_overlays = 11\n")
    write(tmp_path / "overlayd.conf.d" / "99-ignored.conf.bak", "max_overlays = 1000\n")
    write(tmp_path / "overlayd.conf.d" / "notes.txt", "this is not TOML [\n")
    cfg = load_config(conf)
    assert cfg.default_size == 512 * MiB
    assert cfg.max_size == 8 * GiB
    assert cfg.max_overlays == 11


def test_drop_ins_sorted_by_name(tmp_path: Path) -> None:
    conf = tmp_path / "overlayd.conf"
    # Written in the reverse order, so the file system's order is unlikely to match by chance.
    write(tmp_path / "overlayd.conf.d" / "b.conf", "max_overlays = 2\n")
    write(tmp_path / "overlayd.conf.d" / "a.conf", "max_overlays = 1\n")
    assert load_config(conf).max_overlays == 2


def test_drop_ins_without_main_file(tmp_path: Path) -> None:
    write(tmp_path / "overlayd.conf.d" / "50-x.conf", 'max_size = "4G"\n')
    assert load_config(tmp_path / "overlayd.conf").max_size == 4 * GiB


def test_overrides_win(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf", "max_overlays = 7\n")
    write(tmp_path / "overlayd.conf.d" / "10.conf", "max_overlays = 9\n")
    cfg = load_config(conf, max_overlays=3, runtime_dir=tmp_path / "run")
    assert cfg.max_overlays == 3
    assert cfg.runtime_dir == tmp_path / "run"


@pytest.mark.parametrize("where", ["main", "drop-in"])
def test_unknown_key(tmp_path: Path, where: str) -> None:
    conf = tmp_path / "overlayd.conf"
    target = conf if where == "main" else tmp_path / "overlayd.conf.d" / "10.conf"
    write(target, "runtime_dir = \"/run/ov\"\nfrobnicate = true\n")
    with pytest.raises(InvalidSpec) as ei:
        load_config(conf)
    text = str(ei.value)
    assert "'frobnicate'" in text
    assert text[0].isupper()
    assert "https://" not in text and "Traceback" not in text


def test_wrong_value(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf", 'max_overlays = "many"\n')
    with pytest.raises(InvalidSpec, match="'max_overlays'"):
        load_config(conf)


def test_bad_size_string(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf", 'default_size = "lots"\n')
    with pytest.raises(InvalidSpec, match="'default_size'"):
        load_config(conf)


@pytest.mark.parametrize("where", ["main", "drop-in"])
@pytest.mark.parametrize("text", ["max_overlays = \n", "[unclosed\n", "a = 1\na = 2\n",
                                  'x = "unterminated\n'])
def test_broken_toml(tmp_path: Path, where: str, text: str) -> None:
    conf = tmp_path / "overlayd.conf"
    bad = conf if where == "main" else tmp_path / "overlayd.conf.d" / "10-bad.conf"
    write(bad, text)
    with pytest.raises(InvalidSpec) as ei:
        load_config(conf)
    assert str(bad) in str(ei.value)
    assert str(ei.value).startswith("Cannot read the configuration file")


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    conf = tmp_path / "overlayd.conf"
    conf.mkdir()
    with pytest.raises(InvalidSpec):
        load_config(conf)


@pytest.mark.parametrize("line", ["default_size = 0", "default_size = -1", "max_size = -1",
                                  "default_size = true"])
def test_nonsense_sizes_refused(tmp_path: Path, line: str) -> None:
    conf = write(tmp_path / "overlayd.conf", line + "\n")
    with pytest.raises(InvalidSpec):
        load_config(conf)


def test_huge_size_string_is_invalid_spec(tmp_path: Path) -> None:
    conf = write(tmp_path / "overlayd.conf", f'max_size = "{"9" * 400}"\n')
    with pytest.raises(InvalidSpec):
        load_config(conf)


# --- state records -----------------------------------------------------------------------------

def record(**kw: Any) -> Overlay:
    """A record; flat keyword names (image, image_kind, fstype, size, ...) reach into its
    parts, so each case below says only what it changes."""
    lower = {"kind": LowerKind.FILE, "image": "/srv/img.raw", "dev": 2049, "ino": 12,
             "fstype": "ext4", "loop_device": "/dev/loop3"}
    upper = {"size": GiB}
    merged = {"mountpoint": "/run/overlayd/mnt/demo", "created": True,
              "options": ("nosuid", "nodev")}
    for flat, (part, key) in {"image": (lower, "image"), "image_kind": (lower, "kind"),
                              "fstype": (lower, "fstype"), "loop_device": (lower, "loop_device"),
                              "size": (upper, "size"), "mountpoint": (merged, "mountpoint"),
                              "mount_options": (merged, "options")}.items():
        if flat in kw:
            part[key] = kw.pop(flat)
    fields: dict[str, Any] = dict(
        name="demo", state=OverlayState.ACTIVE, lowers=(Lower(**lower),), upper=Upper(**upper),
        merged=Merged(**merged), owner_uid=1000, created_usec=1_700_000_000_000_000,
    )
    fields.update(kw)
    return Overlay(**fields)


@pytest.mark.parametrize("rec", [
    record(),
    record(state=OverlayState.CREATING, loop_device="", mount_options=()),
    record(state=OverlayState.FAILED, error="The commit stopped: no space left.",
           image_kind=LowerKind.DIRECTORY, fstype="squashfs"),
    record(image_kind=LowerKind.BLOCK, image="/dev/sdb1", size=(1 << 64) - 1,
           name="x.y_z", mountpoint="/srv/with space/and\nnewline"),
    record(state=OverlayState.COMMITTING, commit_phase=CommitPhase.APPLYING,
           half_committed=True),
], ids=["active", "creating", "failed", "block", "committing"])
def test_record_round_trip(rec: Overlay) -> None:
    data = dump_record(rec)
    assert data.endswith(b"\n")
    loaded = load_record(data)
    assert loaded == rec
    assert isinstance(loaded.state, OverlayState)
    assert isinstance(loaded.image_kind, LowerKind)
    assert isinstance(loaded.mount_options, tuple)


def test_record_json_is_plain_and_stores_no_derived_paths() -> None:
    data = json.loads(dump_record(record()))
    assert data["version"] == RECORD_VERSION == 4
    assert data["state"] == "active"
    assert data["lowers"][0]["kind"] == "file"
    assert data["merged"]["options"] == ["nosuid", "nodev"]
    assert data["upper"] == {"kind": "tmpfs", "size": GiB}
    assert not [k for k in json.dumps(data).split('"') if k.endswith("_dir")]


def test_record_of_a_newer_version_is_refused_not_stripped() -> None:
    data = json.loads(dump_record(record()))
    data["version"] = RECORD_VERSION + 1
    data["layers_of_the_future"] = [{"x": 1}]
    with pytest.raises(RecordTooNew, match="newer overlayd"):
        load_record(json.dumps(data).encode())


def test_record_with_unknown_keys_is_refused() -> None:
    data = json.loads(dump_record(record()))
    data["from_a_newer_daemon"] = {"x": 1}
    with pytest.raises(RecordError, match="from_a_newer_daemon"):
        load_record(json.dumps(data).encode())


def test_version_1_record_is_migrated() -> None:
    base = "/run/overlayd/demo"
    v1 = {"version": 1, "name": "demo", "state": "active", "image": "/srv/img.raw",
          "image_kind": "file", "image_dev": 2049, "image_ino": 12, "fstype": "ext4",
          "mountpoint": "/run/overlayd/mnt/demo", "mountpoint_created": True, "size": GiB,
          "mount_options": ["nosuid", "nodev"], "loop_device": "/dev/loop3",
          "base_dir": base, "lower_dir": f"{base}/lower", "tmpfs_dir": f"{base}/rw",
          "upper_dir": f"{base}/rw/upper", "work_dir": f"{base}/rw/work", "owner_uid": 1000,
          "created_usec": 1_700_000_000_000_000, "error": ""}
    assert load_record(json.dumps(v1).encode()) == record()


def test_version_2_record_is_migrated_to_its_own_lower() -> None:
    """Version 2 knew no shared lowers: its image mount is the overlay's own."""
    data = json.loads(dump_record(record()))
    data["version"] = 2
    del data["lowers"][0]["shared"]
    loaded = load_record(json.dumps(data).encode())
    assert loaded == record() and loaded.version == RECORD_VERSION
    assert not loaded.lowers[0].shared


def test_shared_lower_round_trip() -> None:
    rec = record()
    rec = rec.evolve(lowers=(rec.lowers[0].model_copy(update={"shared": True}),))
    assert load_record(dump_record(rec)).lowers[0].shared


def test_record_defaults_for_missing_optional_keys() -> None:
    data = json.loads(dump_record(record()))
    for key in ("error", "owner_uid", "created_usec", "commit_phase", "half_committed"):
        del data[key]
    del data["lowers"][0]["loop_device"]
    loaded = load_record(json.dumps(data).encode())
    assert (loaded.error, loaded.loop_device, loaded.owner_uid) == ("", "", 0)


@pytest.mark.parametrize("data", [
    b"",
    b"\n",
    b"garbage",
    b"{",
    b'{"name": "demo"',
    b"[]",
    b"null",
    b"42",
    b"{}",
    b'{"name": "demo"}',
    b'{"name": "demo", "state": "active"}',
    b"\0\0\0\0",
    "\ufffd\ufffd".encode(),
    b"\xff\xfe not utf-8",
    b'{"version": "2"}',
    b'{"version": true}',
])
def test_load_record_garbage(data: bytes) -> None:
    with pytest.raises(RecordError):
        load_record(data)


def test_load_record_half_written() -> None:
    data = dump_record(record())
    for cut in range(0, len(data) - 2, 7):
        with pytest.raises(RecordError):
            load_record(data[:cut])


@pytest.mark.parametrize(("key", "value"), [("state", "exploded"), ("lowers", []),
                                            ("upper", {"size": "big"}), ("name", None)])
def test_load_record_bad_values(key: str, value: Any) -> None:
    data = json.loads(dump_record(record()))
    data[key] = value
    with pytest.raises(RecordError):
        load_record(json.dumps(data).encode())


def test_a_version_3_record_is_read_without_layers() -> None:
    """Version 4 (issue 14) added the layer files above the image; a version 3 record has
    none, and is migrated as it is."""
    data = json.loads(dump_record(record()))
    data["version"] = 3
    del data["layers"], data["pending_layer"]
    loaded = load_record(json.dumps(data).encode())
    assert loaded == record() and loaded.layers == () and loaded.version == 4


def test_a_record_with_layers_round_trips() -> None:
    from overlayd.model import Layer
    rec = record().evolve(layers=(Layer(path="/var/lib/overlayd/layers/demo/0001.erofs",
                                        dev=1, ino=2, fstype="erofs",
                                        loop_device="/dev/loop3"),),
                          commit_phase=CommitPhase.LAYERING,
                          pending_layer="/var/lib/overlayd/layers/demo/0002.erofs")
    assert load_record(dump_record(rec)) == rec


@pytest.mark.parametrize("kind, words", [
    ("zero", "it is not a regular file"), ("fifo", "it is not a regular file"),
    ("latin1", "it is not UTF-8 text"), ("dir", "it is a directory"),
    ("huge", "it is larger than 1 MiB"),
])
def test_a_drop_in_that_is_no_toml_text_is_said_so(tmp_path: Path, kind: str,
                                                   words: str) -> None:
    """Found by hand with SIGHUP: a drop-in linked to /dev/zero grew the daemon to 12 GB, a
    FIFO would hang it, Latin-1 bytes were a UnicodeDecodeError traceback, a directory
    '[Errno 21] Is a directory: ...'. The same reader takes .overlay files."""
    import os

    from overlayd import overlayfile

    conf = tmp_path / "overlayd.conf"
    write(conf, "max_overlays = 5\n")
    bad = tmp_path / "overlayd.conf.d" / "10-bad.conf"
    bad.parent.mkdir()
    if kind == "zero":
        bad.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(bad)
    elif kind == "latin1":
        bad.write_bytes(b"# caf\xe9\nmax_overlays = 3\n")
    elif kind == "dir":
        bad.mkdir()
    else:
        bad.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(InvalidSpec) as ei:
        load_config(conf)
    assert str(ei.value) == f"Cannot read the configuration file '{bad}': {words}" + \
        (" (byte 5)." if kind == "latin1" else ".")
    with pytest.raises(InvalidSpec) as ei:
        overlayfile.load(bad)
    assert str(ei.value).startswith(f"Cannot read '{bad}': {words}")
