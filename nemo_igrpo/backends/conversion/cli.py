"""``igrpo convert``: Hugging Face <-> Megatron checkpoints.

    igrpo convert hf-to-megatron --hf HF_DIR --out MEGATRON_DIR [--tp N --pp M]
    igrpo convert megatron-to-hf --megatron MEGATRON_DIR --hf-config HF_DIR --out OUT_DIR [--dtype bf16|fp32]

The Megatron side is a megatron-core ``dist_checkpointing`` directory (torch_dist format) holding the model state
dict under the top-level key ``model``: the same layout as the model part of the trainer's policy checkpoint
(``MegatronPolicy.save_checkpoint``), so either loads the other's model, and ``megatron-to-hf`` also reads a trainer
checkpoint (``.../checkpoints/step_N`` or its ``policy`` subdirectory; optimizer tensors are not read). TP/PP are
chosen when loading (dist_checkpointing reshards); ``--tp/--pp`` only check that the model can be split that way.

Both directions run in one CPU process (a single-rank gloo group) and validate everything (files, architecture,
tensor names and shapes, the TP/PP split) before writing. Output goes to ``OUT.partial`` and is renamed to ``OUT``
at the end, so an interrupted conversion never leaves a half-written ``OUT``.

Nemotron-H (``nemotron_h``) needs no megatron model in either direction: its dist checkpoint is written from the
mapped tensors with the keys megatron's ``MambaModel`` uses, and read back from the checkpoint's own metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nemo_igrpo.errors import UserError

# Sharded-state-dict metadata the trainer's policy checkpoint uses (MegatronPolicy._sharded_metadata); the model
# part's keys do not depend on it today, but passing the same keeps the two formats identical by construction.
SHARDED_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
# Common (non-tensor) entry this converter adds; readers that do not know it ignore it.
CONVERSION_META_KEY = "conversion_meta"
CONVERSION_FORMAT = 1
# Model tensors in a dist checkpoint; everything else (optimizer state, RNG objects) is not part of the model.
_MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.")
# Files copied from the original HF directory next to the converted weights (tokenizer and generation settings).
_HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                  "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja",
                  "chat_template.json")
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


class ConversionError(UserError):
    """A user-facing error: bad input, unsupported model, a split that does not fit. Printed without traceback."""


# --------------------------------------------------------------------------------------------------------- argparse
def add_parser(subparsers) -> None:
    """Register ``igrpo convert {hf-to-megatron,megatron-to-hf}``."""
    p = subparsers.add_parser("convert", help="convert checkpoints between Hugging Face and Megatron",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

    h2m = sub.add_parser("hf-to-megatron", help="HF safetensors directory -> Megatron dist checkpoint")
    h2m.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    h2m.add_argument("--out", required=True, help="output Megatron checkpoint directory")
    h2m.add_argument("--tp", type=int, default=1, help="tensor parallel size the checkpoint must be loadable with "
                     "(checked; the checkpoint itself reshards to any valid size)")
    h2m.add_argument("--pp", type=int, default=1, help="pipeline parallel size to check, as --tp")
    h2m.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    h2m.add_argument("--trust-remote-code", action="store_true", help="allow custom code from the HF directory")
    h2m.set_defaults(func=_run_hf_to_megatron)

    m2h = sub.add_parser("megatron-to-hf", help="Megatron dist checkpoint (or trainer checkpoint) -> HF directory")
    m2h.add_argument("--megatron", required=True, help="Megatron checkpoint directory, or a trainer step directory")
    m2h.add_argument("--hf-config", "--hf", dest="hf_config", required=True,
                     help="the original HF model directory: config and tokenizer are taken from it")
    m2h.add_argument("--out", required=True, help="output HF directory")
    m2h.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                     help="cast the weights (default: keep the checkpoint's dtypes, bit-exact)")
    m2h.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    m2h.add_argument("--trust-remote-code", action="store_true", help="allow custom code from the HF directory")
    m2h.set_defaults(func=_run_megatron_to_hf)


def _run_hf_to_megatron(args: argparse.Namespace) -> int:
    return _report(lambda: hf_to_megatron(args.hf, args.out, tp=args.tp, pp=args.pp, overwrite=args.overwrite,
                                          trust_remote_code=args.trust_remote_code))


def _run_megatron_to_hf(args: argparse.Namespace) -> int:
    return _report(lambda: megatron_to_hf(args.megatron, args.hf_config, args.out, dtype=args.dtype,
                                          overwrite=args.overwrite, trust_remote_code=args.trust_remote_code))


def _report(fn) -> int:
    """Run a conversion; user errors (``ConversionError`` and the like) reach ``igrpo``, which prints them."""
    try:
        out = fn()
    except FileNotFoundError as err:  # hf_io's missing weights or shards: the user's input
        if isinstance(err, UserError):
            raise
        raise ConversionError(str(err)) from None
    print(f"igrpo convert: wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------------------ validation
def _supported() -> list[str]:
    from nemo_igrpo.backends.conversion import supported_model_types

    return supported_model_types()


def _read_hf_config(hf_dir: str, trust_remote_code: bool):
    """The HF config, after checking the directory, config.json and that the architecture has a mapping (read from
    the raw JSON first, so an unknown model_type is our clear error, not transformers')."""
    import transformers

    path = Path(hf_dir)
    if not path.is_dir():
        raise ConversionError(f"HF directory not found: {hf_dir!r}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{hf_dir!r} has no config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ConversionError(f"{cfg_file} is not valid JSON: {err}") from err
    if model_type not in _supported():
        raise ConversionError(f"unsupported architecture model_type={model_type!r} in {cfg_file}; "
                              f"supported: {_supported()}")
    return transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def validate_parallel(hf_config, tp: int, pp: int) -> None:
    """ConversionError unless the model splits over ``tp`` x ``pp`` (heads, query groups, vocab, layers ...)."""
    if tp < 1 or pp < 1:
        raise ConversionError(f"--tp and --pp must be >= 1, got tp={tp}, pp={pp}")
    try:
        if hf_config.model_type == "nemotron_h":
            from nemo_igrpo.backends.conversion.nemotron_h import check_supported
            from nemo_igrpo.backends.conversion.nemotron_h import validate_parallel as check

            check_supported(hf_config)
            check(hf_config, tp, pp)
        else:
            from nemo_igrpo.backends.policy.model import transformer_config_from_hf

            transformer_config_from_hf(hf_config, torch.float32, tp=tp, pp=pp)
    except ValueError as err:
        raise ConversionError(f"cannot split the model with --tp {tp} --pp {pp}: {err}") from err


def _strip(name: str) -> str:
    # HF base-model prefixes differ between files and modules (Nemotron-H: backbone. on disk, model. in memory).
    for prefix in ("model.", "backbone."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def check_hf_tensors(hf_sd: dict[str, torch.Tensor], hf_config, what: str) -> None:
    """Names and shapes of ``hf_sd`` against the HF model built from ``hf_config`` on the meta device (no memory).

    Catches a checkpoint that does not match its config (wrong hidden size, missing layers) with the tensor named,
    before anything is written. A tied ``lm_head.weight`` may be absent.
    """
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    expected = {_strip(k): tuple(v.shape) for k, v in model.state_dict().items()}
    got = {_strip(k): tuple(v.shape) for k, v in hf_sd.items()}
    original = {_strip(k): k for k in hf_sd}  # report names as the checkpoint spells them
    if getattr(hf_config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)
        got.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected {[original[k] for k in extra[:5]]}{' ...' if len(extra) > 5 else ''}")
    if wrong:
        problems.append("wrong shapes " + ", ".join(f"{original[k]}: {got[k]} (config says {expected[k]})"
                                                    for k in wrong[:5]))
    if problems:
        raise ConversionError(f"{what} does not match its config ({hf_config.model_type}): " + "; ".join(problems))


def _prepare_out(out: str, overwrite: bool) -> tuple[Path, Path]:
    """``(final, partial)`` paths; refuses a non-empty OUT unless ``overwrite`` (an empty one, e.g. made by the sbatch
    script, is fine). Nothing is removed here: the old OUT is replaced only once the new one is complete."""
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise ConversionError(f"--out {out!r} exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise ConversionError(f"--out {out!r} exists and is not empty (pass --overwrite to replace it)")
    partial = final.with_name(final.name + ".partial")
    return final, partial


def _commit(partial: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)


# --------------------------------------------------------------------------------------------------- hf -> megatron
def hf_to_megatron(hf_dir: str, out: str, tp: int = 1, pp: int = 1, overwrite: bool = False,
                   trust_remote_code: bool = False, seed: int = 1234) -> Path:
    """Convert an HF directory to a Megatron dist checkpoint at ``out``; returns ``out``.

    The tensors keep the HF checkpoint's dtype (so the round trip is bit-exact); choose the training dtype when
    loading.
    """
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint

    hf_config = _read_hf_config(hf_dir, trust_remote_code)
    validate_parallel(hf_config, tp, pp)
    final, partial = _prepare_out(out, overwrite)
    try:
        _, hf_sd = read_hf_checkpoint(hf_dir, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise ConversionError(str(err)) from err
    check_hf_tensors(hf_sd, hf_config, f"HF checkpoint {hf_dir!r}")
    dtypes = {t.dtype for t in hf_sd.values() if t.is_floating_point()}
    # The embedding's dtype names the checkpoint's dtype (Nemotron-H may keep A_log/D in fp32 next to bf16).
    dtype = next(t.dtype for k, t in hf_sd.items() if k.endswith(("embed_tokens.weight", "embeddings.weight")))

    _init_single_process(seed)
    try:
        if hf_config.model_type == "nemotron_h":
            sharded = _nemotron_h_sharded_state_dict(hf_sd, hf_config)
        else:
            if len(dtypes) > 1:
                # GPTModel has one params dtype: a mixed checkpoint could not round-trip bit-exactly.
                raise ConversionError(f"HF checkpoint mixes dtypes {sorted(map(str, dtypes))}; expected one")
            sharded = _gpt_sharded_state_dict(hf_sd, hf_config, dtype)
        sharded[CONVERSION_META_KEY] = {
            "format": CONVERSION_FORMAT,
            "model_type": str(hf_config.model_type),
            "dtype": str(dtype).replace("torch.", ""),
            "checked_tp": int(tp),
            "checked_pp": int(pp),
        }
        del hf_sd
        _save_dist_checkpoint(sharded, partial)
        _commit(partial, final)
    finally:
        _destroy_single_process()
    return final


def _init_single_process(seed: int) -> None:
    from nemo_igrpo.backends.policy.parallel import initialize_parallel

    # Our own single-rank group: a conversion must not join a launcher's job (RANK/WORLD_SIZE from torchrun/srun).
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    for var in ("SLURM_PROCID", "SLURM_NTASKS"):
        os.environ.pop(var, None)
    initialize_parallel(1, 1, seed)


def _destroy_single_process() -> None:
    from nemo_igrpo.backends.policy.parallel import destroy_parallel

    destroy_parallel()


def _gpt_sharded_state_dict(hf_sd, hf_config, dtype: torch.dtype) -> dict[str, Any]:
    """The trainer's own model (``build_gpt_model``) with the HF weights in it, as a sharded state dict: the on-disk
    keys are then exactly megatron's, whatever spec built the model."""
    from nemo_igrpo.backends.policy.model import build_gpt_model
    from nemo_igrpo.backends.policy.weights import load_hf_state_dict

    chunks = build_gpt_model(hf_config, dtype)
    try:
        load_hf_state_dict(chunks, hf_sd, hf_config)
    except (KeyError, ValueError) as err:
        raise ConversionError(f"HF weights do not fit the Megatron model: {err}") from err
    return {"model": chunks[0].sharded_state_dict(metadata=dict(SHARDED_METADATA))}


def _nemotron_h_sharded_state_dict(hf_sd, hf_config) -> dict[str, Any]:
    """ShardedTensors for megatron's MambaModel (TE spec keys) made straight from the mapped tensors, so no Mamba
    kernel or GPU is needed. Keys, split parts and the (empty) TE ``_extra_state`` objects are those
    ``MambaModel.sharded_state_dict`` produces at TP=PP=1 (tested against the real model built on CPU)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    from nemo_igrpo.backends.conversion import nemotron_h

    try:
        full = nemotron_h.hf_to_megatron(hf_sd, hf_config, transformer_engine=True)
    except (KeyError, ValueError) as err:
        raise ConversionError(str(err)) from err
    model: dict[str, Any] = {}
    for key, tensor in nemotron_h.to_checkpoint_tensors(full, hf_config).items():
        model[key] = ShardedTensor.from_rank_offsets(key, tensor.contiguous(), replica_id=0)
    for key in nemotron_h.extra_state_keys(hf_config):
        model[key] = ShardedObject(key, None, (1,), (0,), replica_id=0)
    return {"model": model}


def _save_dist_checkpoint(sharded: dict[str, Any], partial: Path) -> None:
    from megatron.core import dist_checkpointing

    if partial.exists():
        shutil.rmtree(partial)  # a leftover of an earlier interrupted run
    partial.mkdir(parents=True)
    try:
        dist_checkpointing.save(sharded, str(partial))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------- megatron -> hf
def resolve_megatron_dir(path: str) -> Path:
    """The dist-checkpoint directory: ``path`` itself, or its ``policy`` subdirectory (a trainer step directory)."""
    p = Path(path)
    if not p.is_dir():
        raise ConversionError(f"Megatron checkpoint directory not found: {path!r}")
    for cand in (p, p / "policy"):
        if (cand / "metadata.json").is_file():
            return cand
    raise ConversionError(f"{path!r} is not a megatron dist checkpoint (no metadata.json, nor in {path}/policy)")


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def load_model_tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The model's full tensors from a dist checkpoint, read without building a model (so any TP/PP it was saved
    with, and Mamba layers on CPU). GPTModel's stacked ``decoder.layers.X`` tensors ([num_layers, ...]) are split
    into per-layer ``decoder.layers.{i}.X``; optimizer state is never read."""
    from megatron.core import dist_checkpointing

    from nemo_igrpo.backends.safe_checkpoint import safe_dist_checkpoint

    # No pickled code runs: the index is read by a restricted unpickler, every torch.load is weights-only.
    with safe_dist_checkpoint(ckpt_dir):
        metadata = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
        wanted = {k: v for k, v in metadata.items() if k.startswith(_MODEL_KEY_PREFIXES)}
        if not wanted:
            raise ConversionError(f"{ckpt_dir} holds no model tensors (keys start with {list(_MODEL_KEY_PREFIXES)})")
        loaded = dist_checkpointing.load(wanted, str(ckpt_dir), validate_access_integrity=False)
    out: dict[str, torch.Tensor] = {}
    for key in wanted:
        tensor = loaded[key]
        if key.startswith("decoder.layers.") and not _LAYER.match(key):
            rest = key[len("decoder.layers."):]
            for i, layer in enumerate(tensor.unbind(0)):
                out[f"decoder.layers.{i}.{rest}"] = layer.clone()
        else:
            out[key] = tensor
    return out


def megatron_to_hf(megatron_dir: str, hf_config_dir: str, out: str, dtype: str | None = None,
                   overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Convert a Megatron dist checkpoint (ours or a trainer checkpoint) to an HF directory at ``out``.

    Config and tokenizer files come from ``hf_config_dir``; config.json is copied verbatim unless ``dtype`` changes
    it. Returns ``out``.
    """
    from nemo_igrpo.backends.conversion import get_mapping
    from nemo_igrpo.backends.conversion.hf_io import save_hf_checkpoint

    hf_config = _read_hf_config(hf_config_dir, trust_remote_code)
    ckpt_dir = resolve_megatron_dir(megatron_dir)
    final, partial = _prepare_out(out, overwrite)
    if dtype is not None and dtype not in _DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected one of {sorted(_DTYPES)}")

    _init_single_process(1234)
    try:
        mg_sd = load_model_tensors(ckpt_dir)
    finally:
        _destroy_single_process()
    try:
        if hf_config.model_type == "nemotron_h":
            from nemo_igrpo.backends.conversion.nemotron_h import from_checkpoint_tensors

            mg_sd = from_checkpoint_tensors(mg_sd, hf_config)
        hf_sd = get_mapping(hf_config.model_type).megatron_to_hf(mg_sd, hf_config)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConversionError(f"{ckpt_dir} does not fit the HF config in {hf_config_dir!r}: {err}") from err
    check_hf_tensors(hf_sd, hf_config, f"Megatron checkpoint {str(ckpt_dir)!r}")

    torch_dtype = _DTYPES[dtype] if dtype else None
    if torch_dtype is not None:
        hf_config.dtype = torch_dtype
    try:
        # save_hf_checkpoint writes OUT.partial and renames it to OUT only when complete.
        save_hf_checkpoint(final, hf_config, sorted(hf_sd.items()),
                           tokenizer=_SideFiles(Path(hf_config_dir), copy_config=torch_dtype is None),
                           dtype=torch_dtype)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


class _SideFiles:
    """Passed to ``save_hf_checkpoint`` as its tokenizer: ``save_pretrained`` copies the tokenizer/generation files
    (and, when the dtype is unchanged, the original config.json byte for byte) from the source HF directory, so no
    tokenizer code runs and fields transformers does not know survive."""

    def __init__(self, src: Path, copy_config: bool) -> None:
        self.src = src
        self.copy_config = copy_config

    def save_pretrained(self, dst) -> None:
        names = list(_HF_SIDE_FILES) + (["config.json"] if self.copy_config else [])
        for name in names:
            if (self.src / name).is_file():
                shutil.copyfile(self.src / name, Path(dst) / name)
