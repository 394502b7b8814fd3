"""The atomic-write helper: every way a target cannot be written is one UserError, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import UserError
from storage.atomic import atomic_write_text, check_writable
from storage.checkpoint import CheckpointManager


@pytest.mark.parametrize("target", ["/proc/x.csv", "/proc/no/such/dir/x.csv"])
def test_a_target_in_a_directory_that_takes_no_files_is_a_user_error(target):
    with pytest.raises(UserError, match=target):
        atomic_write_text(target, "a,b\n")
    with pytest.raises(UserError, match=str(Path(target).parent)):
        check_writable(Path(target).parent)


def test_a_name_too_long_for_the_file_system_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="too long"):
        atomic_write_text(tmp_path / ("x" * 300), "text")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_directory_is_a_user_error_and_keeps_the_old_file(tmpfs):
    mount = tmpfs("1m")
    (mount / "old.txt").write_text("old")
    tmpfs.readonly(mount)
    with pytest.raises(UserError, match="Read-only file system"):
        atomic_write_text(mount / "old.txt", "new")
    with pytest.raises(UserError, match="Read-only file system"):
        check_writable(mount)
    assert (mount / "old.txt").read_text() == "old"


def test_a_disk_that_fills_during_torch_save_is_a_user_error_and_keeps_the_previous_checkpoint(tmpfs):
    mount = tmpfs("2m")
    ckpts = CheckpointManager(mount)
    first = ckpts.save({"w": torch.zeros(1000)}, "stage_000", keep=True)
    with pytest.raises(UserError, match="No space left"):
        ckpts.save({"w": torch.zeros(2**20)}, "frames_1")  # 4 MiB on a 2 MiB disk
    assert sorted(p.name for p in ckpts.dir.iterdir()) == ["latest", "stage_000.pt"]
    assert ckpts.latest_path() == first and ckpts.load(first)["w"].shape == (1000,)
