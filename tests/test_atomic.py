"""Files written whole or not at all (tvr.atomic): checkpoints, metrics, manifests, pages, videos."""

import errno
import os
from types import SimpleNamespace

import pytest
import torch

from tvr import atomic
from tvr.atomic import atomic_torch_save, replacing, temp_files, write_text
from tvr.checkpoint import AtomicCheckpointIO, load_checkpoint_file
from tvr.errors import DiskFullError, exit_on_user_error


def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint_file(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_text_is_utf8_with_the_umask_permissions_and_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.html"
    write_text(target, "old")
    write_text(str(target), "<p>café 🎬</p>")
    assert target.read_text(encoding="utf-8") == "<p>café 🎬</p>"
    assert os.listdir(tmp_path) == ["results.html"]
    plain = tmp_path / "plain.html"
    plain.write_text("")
    assert target.stat().st_mode == plain.stat().st_mode  # the umask's permissions, not a temp file's 0600
    plain.unlink()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text(target, "new")
    assert os.listdir(tmp_path) == ["results.html"]
    assert target.read_text(encoding="utf-8") == "<p>café 🎬</p>"


def test_a_write_in_progress_is_a_temporary_file_beside_the_target(tmp_path):
    """What a killed write leaves is what temp_files finds (and tvr-train's start-up removes)."""
    target = tmp_path / "sub" / "index.faiss"
    with replacing(target) as tmp:
        tmp.write_bytes(b"partial")
        assert tmp.parent == target.parent and temp_files(target.parent) == [tmp]
        assert not target.exists()
    assert target.read_bytes() == b"partial" and temp_files(target.parent) == []


def enospc(obj, file):  # a writer whose error carries the errno
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 3900") from None


def torch_on_a_full_disk(obj, file):  # what torch.save to /dev/full raises: no errno anywhere
    try:
        raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


@pytest.mark.parametrize("writer", [enospc, torch_on_a_full_disk])
def test_a_full_disk_while_saving_a_checkpoint_names_the_disk_the_file_and_the_step(
    writer, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"global_step": 3}, path)
    monkeypatch.setattr(torch, "save", writer)
    if writer is torch_on_a_full_disk:
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    with pytest.raises(DiskFullError) as error:
        AtomicCheckpointIO().save_checkpoint({"global_step": 7}, path)
    message = str(error.value)
    assert f"disk holding {path.parent}" in message and f"writing {path} (the checkpoint of step 7)" in message
    assert error.value.step == 7  # what error.json records
    monkeypatch.undo()
    assert load_checkpoint_file(path)["global_step"] == 3 and os.listdir(path.parent) == ["last.ckpt"]

    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda: (_ for _ in ()).throw(error.value))()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {message}\n")


def test_a_failed_write_with_free_space_keeps_its_own_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)  # the same error, but the disk has room
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: SimpleNamespace(free=10**9))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_torch_save({"global_step": 3}, tmp_path / "last.ckpt")
