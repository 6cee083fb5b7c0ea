"""packaging/overlayd.conf, shipped as /etc/overlayd/overlayd.conf: every setting with its
default, commented out; uncommented, it is the defaults."""

from __future__ import annotations

import re
from pathlib import Path

from overlayd.config import DaemonConfig, load_config

SHIPPED = Path(__file__).resolve().parents[2] / "packaging/overlayd.conf"


def test_it_names_every_setting() -> None:
    keys = set(re.findall(r"^#(\w+) = ", SHIPPED.read_text(), re.M))
    assert keys == set(DaemonConfig.model_fields)


def test_as_shipped_and_uncommented_it_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(SHIPPED) == DaemonConfig()
    text = re.sub(r"^#(\w+ = )", r"\1", SHIPPED.read_text(), flags=re.M)
    (tmp_path / "overlayd.conf").write_text(text)
    got, default = load_config(tmp_path / "overlayd.conf"), DaemonConfig()
    # mount_root: unset means RUNTIME_DIR/mnt, which the file spells out
    assert got.mount_root_dir == default.mount_root_dir
    assert got.model_dump(exclude={"mount_root"}) == default.model_dump(exclude={"mount_root"})


def test_an_unknown_key_names_the_file_and_the_valid_keys(tmp_path: Path) -> None:
    (tmp_path / "overlayd.conf").write_text('default_size = "2G"\n')
    (tmp_path / "overlayd.conf.d").mkdir()
    (tmp_path / "overlayd.conf.d/50-mine.conf").write_text("max_sise = 3\n")
    try:
        load_config(tmp_path / "overlayd.conf")
    except Exception as e:
        msg = str(e)
    else:
        raise AssertionError("accepted")
    assert "'max_sise'" in msg and "50-mine.conf" in msg and "max_size" in msg, msg
