"""Loading megatron ``dist_checkpointing`` directories (torch_dist format) without running code from the checkpoint.

A torch_dist directory holds three kinds of pickles, and the stock loaders trust all of them:

- ``.metadata``, the index of every tensor and object (torch's ``FileSystemReader.read_metadata`` calls
  ``pickle.load`` on it: a crafted file runs arbitrary code under ``igrpo train trainer.resume=true`` and
  ``igrpo convert megatron-to-hf``);
- the non-tensor items inside the ``*.distcp`` shards (our RNG state, Transformer Engine ``_extra_state``), which
  torch's default load planner reads with ``torch.load(weights_only=False)``;
- ``common.pt``, the common state dict (``torch.load`` with torch's default, which an environment variable can turn
  back to full unpickling).

``safe_dist_checkpoint(path)`` closes all three for the duration of a load: ``.metadata`` goes through
``MetadataUnpickler``, which resolves only the classes a checkpoint index is made of (below) and refuses anything
else before calling it; every ``torch.load`` is forced to ``weights_only=True`` (tensors, containers and plain values
only). It first runs ``verify_dist_checkpoint``, so that a truncated or missing shard is an error naming the file
instead of an ``EOFError`` deep inside torch, and a ``.metadata`` that points outside the directory is refused.

What is and is not safe to load is summarised in docs/safety.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import threading
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from nemo_igrpo.errors import DamagedFileError, UserError

METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"
CONFIG_FILE = "metadata.json"

# The classes a torch distributed-checkpoint index is made of (torch 2.6 - 2.13): the metadata dataclasses, the
# filesystem storage records, the save plan torch keeps in ``all_local_plans``, torch.Size and the dtype/layout
# singletons of the tensor properties. Constructing any of them runs no user-controlled code.
_DCP = "torch.distributed.checkpoint"
ALLOWED_METADATA_GLOBALS = frozenset({
    (f"{_DCP}.metadata", "Metadata"),
    (f"{_DCP}.metadata", "MetadataIndex"),
    (f"{_DCP}.metadata", "StorageMeta"),
    (f"{_DCP}.metadata", "TensorStorageMetadata"),
    (f"{_DCP}.metadata", "BytesStorageMetadata"),
    (f"{_DCP}.metadata", "ChunkStorageMetadata"),
    (f"{_DCP}.metadata", "TensorProperties"),
    (f"{_DCP}.metadata", "_MEM_FORMAT_ENCODING"),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    (f"{_DCP}.planner", "SavePlan"),
    (f"{_DCP}.planner", "WriteItem"),
    (f"{_DCP}.planner", "WriteItemType"),
    (f"{_DCP}.planner", "TensorWriteData"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch.layout's pickle constructor: a lookup by name
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id when the saver was given a Path
})


class UnsafeCheckpointError(UserError):
    """A checkpoint file references code that a checkpoint never needs: it may have been crafted to run it."""


class DamagedCheckpointError(DamagedFileError):
    """A checkpoint that is incomplete or corrupted (truncated shard, missing file, unreadable index)."""


def _is_torch_dtype(module: str, name: str) -> bool:
    if module != "torch":
        return False
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a distributed-checkpoint ``.metadata`` file, resolving only ``ALLOWED_METADATA_GLOBALS`` and torch
    dtypes. Any other global (``os.system``, ``builtins.eval``, a class with a malicious ``__reduce__``...) is refused
    before it is looked up, so nothing it names is ever called."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_METADATA_GLOBALS or _is_torch_dtype(module, name):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load: it references {module}.{name}, which a checkpoint index never "
            "contains (only torch distributed-checkpoint metadata classes are allowed); the file may have been "
            "crafted to run code. Do not load checkpoints from sources you do not trust.")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source}: refusing to load: unexpected persistent reference in the index")


def load_metadata(path: str | Path) -> Any:
    """The ``Metadata`` object of ``path`` (a ``.metadata`` file), through ``MetadataUnpickler``."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _check_metadata(MetadataUnpickler(f, str(path)).load(), path, Metadata)
    except UserError:
        raise
    except FileNotFoundError:
        raise DamagedCheckpointError(f"{path}: missing (the index of the checkpoint's tensors)") from None
    except Exception as err:  # noqa: BLE001 - any parse failure of a damaged file: say which file
        raise DamagedCheckpointError(f"{path}: unreadable checkpoint index ({type(err).__name__}: {err})") from None


def _check_metadata(obj: Any, path: Path, metadata_cls: type) -> Any:
    if not isinstance(obj, metadata_cls):
        raise DamagedCheckpointError(f"{path}: not a checkpoint index (holds a {type(obj).__name__})")
    return obj


def _restricted_pickle_load(file, *args, **kwargs) -> Any:
    """Stand-in for ``pickle.load`` inside torch's distributed-checkpoint reader (see ``restricted_unpickling``)."""
    return MetadataUnpickler(file, getattr(file, "name", METADATA_FILE)).load()


class _PickleForReader:
    """What torch's filesystem reader sees as its ``pickle`` module while a safe load runs: ``load`` is restricted,
    everything else (``dump`` for a concurrent save, constants) is the real module's."""

    load = staticmethod(_restricted_pickle_load)

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


_lock = threading.RLock()
_depth = 0
_saved: dict[str, Any] = {}


@contextlib.contextmanager
def restricted_unpickling() -> Iterator[None]:
    """While active: torch's distributed-checkpoint reader unpickles ``.metadata`` with ``MetadataUnpickler``, and
    every ``torch.load`` in the process runs with ``weights_only=True`` (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, which
    overrides an explicit ``weights_only=False``). Re-entrant; restores everything on exit."""
    global _depth
    import torch.distributed.checkpoint.filesystem as dcp_fs

    with _lock:
        if _depth == 0:
            if getattr(dcp_fs, "pickle", None) is not pickle:
                # Fail closed: this torch reads .metadata some other way, which this module has not been checked on.
                raise RuntimeError("torch.distributed.checkpoint.filesystem no longer reads .metadata with the "
                                   "pickle module; nemo_igrpo.backends.safe_checkpoint must be updated for this torch")
            _saved.clear()
            _saved["pickle"] = dcp_fs.pickle
            _saved["env"] = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                             "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
            dcp_fs.pickle = _PickleForReader()
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                dcp_fs.pickle = _saved["pickle"]
                for key, value in _saved["env"].items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


def verify_dist_checkpoint(path: str | Path) -> None:
    """Check a torch_dist directory before loading it: its files exist, the index loads safely, every shard the index
    points into is inside the directory and long enough, and ``common.pt`` is a complete archive.

    Raises ``DamagedCheckpointError`` naming the file at fault (a truncated shard: its size and the size the index
    needs), or ``UnsafeCheckpointError``. Reads the index and the file sizes only, so it costs no tensor I/O.
    """
    root = Path(path)
    if not root.is_dir():
        raise DamagedCheckpointError(f"{root}: checkpoint directory not found")
    config = root / CONFIG_FILE
    try:
        json.loads(config.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(f"{config}: missing (not a megatron dist checkpoint, or an incomplete one)") \
            from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedCheckpointError(f"{config}: not valid JSON ({err})") from None
    metadata = load_metadata(root / METADATA_FILE)
    needed: dict[str, int] = defaultdict(int)
    for info in (metadata.storage_data or {}).values():
        name = str(getattr(info, "relative_path", ""))
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise UnsafeCheckpointError(f"{root / METADATA_FILE}: refusing to load: it points at {name!r}, outside "
                                        "the checkpoint directory")
        needed[name] = max(needed[name], int(info.offset) + int(info.length))
    for name, need in sorted(needed.items()):
        shard = root / name
        if not shard.is_file():
            raise DamagedCheckpointError(f"{shard}: missing (the checkpoint index lists it)")
        size = shard.stat().st_size
        if size < need:
            raise DamagedCheckpointError(f"{shard}: truncated: {size} bytes, the checkpoint index needs {need}")
    common = root / COMMON_FILE
    if not common.is_file():
        raise DamagedCheckpointError(f"{common}: missing (the checkpoint's common state)")
    try:
        with zipfile.ZipFile(common) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DamagedCheckpointError(f"{common}: damaged ({err})") from None
    if bad is not None:
        raise DamagedCheckpointError(f"{common}: damaged (checksum mismatch in {bad})")


def _root_cause(err: BaseException) -> BaseException:
    """The exception behind a load failure: torch's CheckpointException wraps one per failed rank."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        wrapped = failures[min(failures)]  # (exception, traceback summary)
        return wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped
    return err


def _describe(err: BaseException) -> str:
    """One line for a load failure."""
    cause = _root_cause(err)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    # torch's weights-only refusal puts the reason ("Unsupported global: ...") after a long preamble.
    reason = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0] if lines else "")
    return f"{type(cause).__name__}: {reason}"[:500]


@contextlib.contextmanager
def safe_dist_checkpoint(path: str | Path, verify: bool = True) -> Iterator[None]:
    """Wrap megatron ``dist_checkpointing`` load calls on ``path``::

        with safe_dist_checkpoint(ckpt_dir):
            common = dist_checkpointing.load_common_state_dict(ckpt_dir)
            state = dist_checkpointing.load(sharded_sd, ckpt_dir)

    Verifies the directory first (``verify=False``: it was, by an earlier block on the same load), then loads with
    ``restricted_unpickling``. A failure inside the block that is not
    already a ``UserError`` becomes a ``DamagedCheckpointError`` naming the directory (a shard whose bytes are
    corrupted but whose length is right is only found here).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    if verify:
        verify_dist_checkpoint(path)
    with restricted_unpickling():
        try:
            yield
        except UserError:
            raise
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - CheckpointException is a BaseException
            cause = _root_cause(err)
            if isinstance(cause, UserError):
                raise cause from err
            if isinstance(cause, pickle.UnpicklingError) and "weights only" in str(cause).lower():
                raise UnsafeCheckpointError(f"{path}: refusing to load an object that is not tensors or plain "
                                            f"values; the checkpoint may have been crafted to run code "
                                            f"({_describe(err)})") from err
            raise DamagedCheckpointError(f"{path}: cannot be loaded ({_describe(err)})") from err
