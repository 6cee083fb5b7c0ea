"""What ``overlayctl status`` says of the image's free space beside the writes."""

from __future__ import annotations

from overlayd.cli.overlays import _image_space_line
from overlayd.sizes import format_approx

MiB = 1 << 20


def test_free_space_of_the_image_beside_the_writes() -> None:
    p = {"FsType": "ext4", "ImageSize": 64 * MiB, "ImageFree": 58_650_624, "UpperUsed": MiB}
    assert _image_space_line(p) == "55.9M free of 64M"


def test_writes_larger_than_the_free_space_are_pointed_out() -> None:
    p = {"FsType": "ext4", "ImageSize": 64 * MiB, "ImageFree": 2 * MiB, "UpperUsed": 5 * MiB}
    assert _image_space_line(p) == ("2M free of 64M, less than the 5M of writes: a commit may "
                                    "not fit")


def test_a_read_only_image_and_an_old_daemon() -> None:
    assert _image_space_line({"FsType": "squashfs", "UpperUsed": 0}) == \
        "none: squashfs is read-only (commit to a layer)"
    assert _image_space_line({"FsType": "ext4", "UpperUsed": 0}) == "-"


def test_approximate_sizes() -> None:
    assert [format_approx(n) for n in (0, 1023, 1024, 1536, 58_650_624, 5 << 30)] == \
        ["0B", "1023B", "1K", "1.5K", "55.9M", "5G"]
