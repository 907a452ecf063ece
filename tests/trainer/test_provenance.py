"""Every run records what produced it: package versions, the git commit and whether the tree was dirty."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata

from nemo_igrpo.trainer.provenance import write_provenance


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_commit_dirty_flag_and_versions(tmp_path):
    repo = tmp_path / "src"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (repo / "untracked.txt").write_text("run output\n")  # untracked files do not change the code
    out = tmp_path / "run"
    write_provenance(out, source_dir=repo)
    (repo / "a.py").write_text("x = 2\n")
    write_provenance(out, source_dir=repo)
    first, second = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    head = _git(repo, "rev-parse", "HEAD")
    assert first["git"] == {"commit": head, "dirty": False, "changed": []}
    assert second["git"] == {"commit": head, "dirty": True, "changed": ["a.py"]}
    assert first["packages"]["torch"] == metadata.version("torch")
    assert first["packages"]["megatron-core"] == metadata.version("megatron-core")
    assert first["packages"]["transformers"] == metadata.version("transformers")


def test_not_a_checkout_is_recorded_not_fatal(tmp_path):
    write_provenance(tmp_path / "run", source_dir=tmp_path)
    rec = json.loads((tmp_path / "run" / "provenance.jsonl").read_text())
    assert "no git checkout" in rec["git"]["error"]
