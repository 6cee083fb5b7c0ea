"""Which names a commit's sweep takes for its own temporaries (pure: names and numbers)."""

from __future__ import annotations

import pytest

from overlayd.host.merge import TMP_PREFIX, is_temporary

DIR_INO = 4242


@pytest.mark.parametrize(("name", "ours"), [
    (f"{TMP_PREFIX}4242-0123abcd-1", True),          # this version's, in its own directory
    (f"{TMP_PREFIX}4242-ffffffff-987654", True),
    (f"{TMP_PREFIX}4243-0123abcd-1", False),         # another directory's number
    (f"{TMP_PREFIX}4242-0123abcd-1.txt", False),
    (f"{TMP_PREFIX}4242-0123abc-1", False),          # not the token's length
    (f"{TMP_PREFIX}4242-0123ABCD-1", False),
    (f"{TMP_PREFIX}1234-7", True),                   # an earlier version's (regular files)
    (f"{TMP_PREFIX}1234-7-", False),
    (f"{TMP_PREFIX}notes", False),
    (f"{TMP_PREFIX}", False),
    (f"x{TMP_PREFIX}4242-0123abcd-1", False),
    (".overlayd-commit", False),
    ("4242-0123abcd-1", False),
])
def test_is_temporary(name: str, ours: bool) -> None:
    assert is_temporary(name, DIR_INO) is ours
