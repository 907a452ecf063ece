"""The generic name -> entry registry, the registries built on it, and the import graph they must not tangle."""

import ast
from pathlib import Path

import pytest

from nemo_igrpo.algorithms.advantages import ADVANTAGE_ESTIMATORS
from nemo_igrpo.algorithms.losses import POLICY_LOSSES
from nemo_igrpo.registry import Registry
from nemo_igrpo.rewards.registry import REWARDS

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_igrpo"


def test_builtin_names():
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "grpo", "rloo"]
    assert POLICY_LOSSES.names() == ["dapo", "dr_grpo", "grpo", "gspo"]
    assert REWARDS.names() == ["accuracy", "format", "judge", "overlong"]


@pytest.mark.parametrize("registry, listed", [(ADVANTAGE_ESTIMATORS, "dr_grpo, grpo, rloo"),
                                              (POLICY_LOSSES, "dapo, dr_grpo, grpo, gspo"),
                                              (REWARDS, "accuracy, format, judge, overlong")])
def test_unknown_name_lists_registered_names(registry, listed):
    with pytest.raises(KeyError) as err:
        registry.get("nope")
    assert "unknown" in str(err.value) and "'nope'" in str(err.value) and listed in str(err.value)


def test_register_get_contains_and_duplicates():
    reg = Registry("thing")

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and "a" in reg and "b" not in reg and reg.names() == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("")


def _module_imports() -> dict[str, set[str]]:
    """Every explicit import between the package's modules, at module level or inside functions alike."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                for a in node.names:
                    deps |= {f"{base}.{a.name}"} if f"{base}.{a.name}" in modules else ({base} & modules.keys())
        graph[name] = deps - {name}
    return graph


# No module of the package may sit on an import cycle (function-level imports count too).
CHECKED = ("nemo_igrpo",)


def test_no_import_cycles():
    """Registries are defined beside their entries: a registry that imports its entries, which import them back (the
    old lazy algorithms/registry.py), is a cycle."""
    graph = _module_imports()
    assert "nemo_igrpo.registry" in graph and not graph["nemo_igrpo.registry"]  # imports nothing of the project
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert [c for c in cycles if any(m.startswith(CHECKED) for m in c)] == []
