"""Loading a megatron dist checkpoint never runs code from it, and a damaged one is an error naming the file.

Each crafted file is first shown to run code when loaded the stock way (so the test cannot pass vacuously), then
loaded through ``safe_dist_checkpoint``: refused, and the code did not run.
"""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from nemo_igrpo.backends.safe_checkpoint import (DamagedCheckpointError, UnsafeCheckpointError, load_metadata,
                                                 restricted_unpickling, safe_dist_checkpoint, verify_dist_checkpoint)
from nemo_igrpo.errors import UserError


class RunsCode:
    """Unpickling this creates the directory ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def parallel():
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(1, 1, seed=0)
    yield
    destroy_parallel()


def _sharded(values: bool):
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    w = torch.arange(6, dtype=torch.float32).view(2, 3) if values else torch.zeros(2, 3)
    obj = {"a": torch.tensor([1, 2]), "n": 3} if values else None
    return {"w": ShardedTensor.from_rank_offsets("w", w, replica_id=0),
            "obj": ShardedObject("obj", obj, (1,), (0,), replica_id=0)}


@pytest.fixture
def ckpt(tmp_path, parallel):
    from megatron.core import dist_checkpointing

    path = tmp_path / "ckpt"
    path.mkdir()
    dist_checkpointing.save({**_sharded(True), "common": {"step": 7}}, str(path))
    return path


def _load(path):
    from megatron.core import dist_checkpointing

    with safe_dist_checkpoint(path):
        common = dist_checkpointing.load_common_state_dict(str(path))
        state = dist_checkpointing.load(_sharded(False), str(path))
    return common, state


def test_round_trip_through_the_safe_loader(ckpt):
    common, state = _load(ckpt)
    assert common["common"] == {"step": 7}
    assert torch.equal(state["w"], torch.arange(6, dtype=torch.float32).view(2, 3))
    assert torch.equal(state["obj"]["a"], torch.tensor([1, 2])) and state["obj"]["n"] == 3


def test_crafted_metadata_does_not_run(ckpt, tmp_path):
    marker = tmp_path / "ran"
    (ckpt / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with open(ckpt / ".metadata", "rb") as f:  # the stock reader (pickle.load) runs it
        pickle.load(f)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refusing to load: it references posix\.mkdir"):
        _load(ckpt)
    assert not marker.exists()
    # Also when torch's own reader gets the file (the verification step skipped): its pickle is the restricted one.
    from torch.distributed.checkpoint import FileSystemReader

    with restricted_unpickling(), pytest.raises(UnsafeCheckpointError):
        FileSystemReader(str(ckpt)).read_metadata()
    assert not marker.exists()


def _replace_bytes_item(ckpt, key_prefix: str, payload: bytes) -> None:
    """Point the index entry of a non-tensor item at ``payload``, appended to its shard (a valid index otherwise)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = load_metadata(ckpt / ".metadata")
    key = next(k for k, v in md.state_dict_metadata.items()
               if isinstance(v, BytesStorageMetadata) and k.startswith(key_prefix))
    info = md.storage_data[next(i for i in md.storage_data if i.fqn == key)]
    shard = ckpt / info.relative_path
    info.offset, info.length = shard.stat().st_size, len(payload)
    with open(shard, "ab") as f:
        f.write(payload)
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))


def test_crafted_object_in_a_shard_does_not_run(ckpt, tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save(RunsCode(marker), buf)
    _replace_bytes_item(ckpt, "obj", buf.getvalue())
    from megatron.core import dist_checkpointing

    with pytest.raises(TypeError):  # the stock loader runs it (torch.load(weights_only=False)), then chokes on None
        dist_checkpointing.load(_sharded(False), str(ckpt))
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(UnsafeCheckpointError, match=r"may have been crafted.*posix\.mkdir"):
        _load(ckpt)
    assert not marker.exists()


def test_crafted_common_state_does_not_run_even_when_torch_is_told_to_unpickle(ckpt, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    torch.save(RunsCode(marker), ckpt / "common.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from megatron.core import dist_checkpointing

    dist_checkpointing.load_common_state_dict(str(ckpt))  # stock: the environment turns unpickling back on
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(UnsafeCheckpointError):
        _load(ckpt)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # the caller's environment is restored
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_truncated_shard_names_the_file(ckpt):
    shard = max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    with pytest.raises(DamagedCheckpointError, match=rf"{shard.name}: truncated: {size // 2} bytes, the checkpoint "
                                                     rf"index needs {size}"):
        verify_dist_checkpoint(ckpt)
    shard.unlink()
    with pytest.raises(DamagedCheckpointError, match=rf"{shard.name}: missing"):
        _load(ckpt)


def test_damaged_index_and_common_state_name_the_file(ckpt):
    common = (ckpt / "common.pt").read_bytes()
    (ckpt / "common.pt").write_bytes(common[: len(common) // 2])
    with pytest.raises(DamagedCheckpointError, match=r"common\.pt: damaged"):
        verify_dist_checkpoint(ckpt)
    (ckpt / "common.pt").write_bytes(common)
    (ckpt / ".metadata").write_bytes((ckpt / ".metadata").read_bytes()[:100])
    with pytest.raises(DamagedCheckpointError, match=r"\.metadata: unreadable checkpoint index"):
        verify_dist_checkpoint(ckpt)
    (ckpt / ".metadata").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"\.metadata: missing"):
        verify_dist_checkpoint(ckpt)


def test_index_pointing_outside_the_directory_is_refused(ckpt):
    md = load_metadata(ckpt / ".metadata")
    next(iter(md.storage_data.values())).relative_path = "../../etc/passwd"
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint directory"):
        verify_dist_checkpoint(ckpt)


def test_loader_state_is_restored_after_a_failure(ckpt):
    import torch.distributed.checkpoint.filesystem as dcp_fs

    (ckpt / ".metadata").write_bytes(b"garbage")
    with pytest.raises(UserError):
        _load(ckpt)
    assert dcp_fs.pickle is pickle and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
