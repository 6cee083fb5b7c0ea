"""Boot overlays: the mount units overlayd-generator renders really mount, and the daemon
adopts what they mounted, so Commit and Discard work on it.

systemd is not running here, so each rendered unit is mounted the way systemd mounts it:
mount(8) with its What=, Where=, Type= and Options= (the container test does it for real).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from overlayd import boot, overlayfile, render
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from tests import helpers
from tests.kernel.conftest import Env


def mount_like_systemd(unit_text: str) -> None:
    keys = dict(line.split("=", 1) for line in unit_text.splitlines()
                if "=" in line and not line.startswith("#"))
    Path(keys["Where"]).mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-o", keys["Options"], keys["What"], keys["Where"]]
    if "Type" in keys:
        cmd[1:1] = ["-t", keys["Type"]]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def boot_overlay(env: Env, image: Path, name: str, *, layers: int = 3) -> Any:
    file = env.root / f"{name}.overlay"
    file.write_text(f'image = "{image}"\nsize = "32M"\nboot = true\n')
    spec_file = overlayfile.load(file)
    units = render.render(name, spec_file, file, env.config, LinuxHost().system.memory_total())
    for i, (_unit, text) in enumerate(units.all()[:layers]):
        if i == 2:
            boot.prepare(name, env.config)  # overlayd-prepare@NAME.service
        mount_like_systemd(text)
    return spec_file.spec(name)


def test_daemon_adopts_a_boot_overlay_then_commits_and_discards(env: Env, image: Path) -> None:
    spec = boot_overlay(env, image, "early")
    merged = env.config.mount_root_dir / "early"
    assert (merged / "hello.txt").read_text() == "hello from the image\n"
    (merged / "new.txt").write_text("written after boot\n")

    mgr = OverlayManager(env.config, LinuxHost())
    result = env.run(mgr.start({"early": spec}))
    assert result.booted == ["early"] and not result.problems
    rec = mgr.get("early")
    assert rec.loop_device.startswith("/dev/loop") and rec.fstype == "ext4"
    assert rec.size == 32 << 20 and rec.mountpoint == str(merged)
    assert (Path(env.paths(rec).base_dir) / "overlay.json").is_file()

    env.run(mgr.commit("early"))
    env.run(mgr.discard("early"))
    assert not helpers.mounts_under(str(env.root))
    check = env.root / "check"
    check.mkdir()
    helpers.sh("mount", "-o", "ro,loop", image, check)
    try:
        assert (check / "new.txt").read_text() == "written after boot\n"
    finally:
        helpers.sh("umount", check)


def test_a_partly_mounted_boot_overlay_is_left_alone(env: Env, image: Path) -> None:
    spec = boot_overlay(env, image, "half", layers=2)
    mgr = OverlayManager(env.config, LinuxHost())
    result = env.run(mgr.start({"half": spec}))
    assert not result.adopted and "only in part" in result.problems[0]
    lower = str(env.config.runtime_dir / "half" / "lower")
    assert {m.target for m in LinuxHost().mounts.table()} >= {lower}
    helpers.force_cleanup(str(env.root))


def test_without_its_file_the_overlay_is_adopted_from_the_mount_table(env: Env,
                                                                    image: Path) -> None:
    """The .overlay file changed (boot = false, a typo, removed) after it came up, or the
    units came from 'overlayctl render': the live overlay is still adopted, never torn
    down with its writes."""
    boot_overlay(env, image, "edited")
    merged = env.config.mount_root_dir / "edited"
    (merged / "mine.txt").write_text("do not lose me\n")
    mgr = OverlayManager(env.config, LinuxHost())
    result = env.run(mgr.start({}))
    assert result.booted == ["edited"] and not result.cleaned
    rec = mgr.get("edited")
    assert rec.image == str(image) and rec.mountpoint == str(merged) and rec.size == 32 << 20
    assert (merged / "mine.txt").read_text() == "do not lose me\n"
    env.run(mgr.commit("edited"))
    env.run(mgr.discard("edited"))
    assert not helpers.mounts_under(str(env.root))


def test_a_boot_overlay_over_a_stack_of_layers(env: Env, image: Path) -> None:
    """Issue 14: layers in the .overlay file render one mount unit each; the daemon adopts
    the stack, and commits to a new layer on top of it."""
    from overlayd.model import CommitTarget

    rec = env.create("maker", image)
    for i in range(2):
        (Path(rec.mountpoint) / f"gen{i}.txt").write_text(f"{i}\n")
        env.run(env.manager.commit("maker", target=CommitTarget.LAYER))
    (Path(rec.mountpoint) / "hello.txt").unlink()
    env.run(env.manager.commit("maker"))
    made = [la.path for la in env.manager.get("maker").layers]
    env.run(env.manager.discard("maker"))

    file = env.root / "stk.overlay"
    file.write_text(f'image = "{image}"\nsize = "32M"\nboot = true\n'
                    f'layers = {made!r}\n'.replace("'", '"'))
    spec_file = overlayfile.load(file)
    units = render.render("stk", spec_file, file, env.config,
                          LinuxHost().system.memory_total())
    assert len(units.layers) == 3
    for _unit, text in units.all()[:-1]:
        mount_like_systemd(text)
    boot.prepare("stk", env.config)
    mount_like_systemd(units.overlay[1])
    merged = env.config.mount_root_dir / "stk"
    assert sorted(p.name for p in merged.iterdir() if p.name != "lost+found") == \
        ["gen0.txt", "gen1.txt", "sub"]

    env.drop_locks()
    mgr = OverlayManager(env.config, LinuxHost())
    result = env.run(mgr.start({"stk": spec_file.spec("stk")}))
    assert result.booted == ["stk"] and not result.problems, result.problems
    assert [la.path for la in mgr.get("stk").layers] == made
    (merged / "gen2.txt").write_text("2\n")
    env.run(mgr.commit("stk"))  # with layers: to a new layer on top
    assert len(mgr.get("stk").layers) == 4
    assert (merged / "gen2.txt").read_text() == "2\n"
    env.run(mgr.discard("stk"))
    assert not helpers.mounts_under(str(env.root))
