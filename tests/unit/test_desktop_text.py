"""What the Overlays app says (overlayd.desktop.text): pure, no GTK needed."""

from __future__ import annotations

from overlayd.desktop import text


def test_sizes() -> None:
    assert text.human(0) == "0 B"
    assert text.human(1536) == "1.5 KiB"
    assert text.human(3 << 30) == "3.0 GiB"
    assert text.ram_text(512 << 20, 1 << 30) == "RAM 512.0 MiB of 1.0 GiB (50%)"
    assert text.ram_text(0, 0) == "RAM 0 B of 0 B (0%)"


def test_usage_classes() -> None:
    assert [text.usage_level(u) for u in ("ok", "high", "critical", "full", "?")] == \
        ["usage-ok", "usage-high", "usage-critical", "usage-full", "usage-ok"]


def test_job_text() -> None:
    now = 1_000_000_000_000_000
    assert text.job_text(False, 0.0, 0, 0, now) == "Waiting…"
    assert text.job_text(True, 0.42, 0, 0, now) == "42%"
    assert text.job_text(True, 0.5, 12 << 20, now + 5_000_000, now) == \
        "50% · 12.0 MiB/s · 5s left"
    assert text.time_left(now + 65_000_000, now) == "1m 05s left"
    assert text.time_left(now - 1, now) == "0s left"


def test_discard_words_count_the_changes() -> None:
    assert text.changes_text(1) == "1 change"
    assert "3 changes" in text.discard_body("a", 3).lower()
    assert "no change" in text.discard_body("a", 0)


def test_errors_are_the_daemons_words_without_the_error_name() -> None:
    raw = ("GDBus.Error:org.overlayd.Overlayd1.Error.OverlayBusy: Overlay 'a' is busy: "
           "files are open in it by bash (pid 12).")
    assert text.error_text(raw) == "Overlay 'a' is busy: files are open in it by bash (pid 12)."
    assert text.error_text("GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown: ") == \
        "overlayd is not running."
    assert text.error_text("GDBus.Error:org.example.Odd: ") == \
        "overlayd refused without saying why."
    assert text.error_text("Timeout was reached") == "Timeout was reached"


def test_names_from_file_names() -> None:
    assert text.safe_name("my disk (1)") == "my-disk-1"
    assert text.safe_name("...") == "overlay"


def test_the_image_free_space_beside_the_writes() -> None:
    assert text.image_free_text("ext4", 3 << 20, 1 << 20) == "3.0 MiB free in the image"
    assert text.image_free_text("ext4", 1 << 20, 3 << 20) == \
        "1.0 MiB free in the image: less than the writes"
    assert text.image_free_text("squashfs", 0, 0) == "read-only image"
    assert text.image_free_text("ext4", None, 0) == "", "a daemon without ImageFree"
    assert text.image_free_text("ext4", 0, 1 << 20, 0) == "", \
        "ImageSize 0: not known now (a commit has the image unmounted), not a full image"
    assert text.image_free_text("ext4", 0, 1 << 20, 64 << 20) == \
        "0 B free in the image: less than the writes"
