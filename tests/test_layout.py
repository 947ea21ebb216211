"""The code's shape: imports point down the pipeline and never form a circle, and the stage list exists once.

Layers, bottom up: ``features`` (audio -> numbers) < ``decoding`` (the HMM/WFST side) < the ``asr_kd`` library,
itself in layers (``corpus`` < ``nn``: the DNN and its training < ``distillation``: ensembles, soft targets,
students, the 3% experiment < ``evaluation``: systems, statistics, comparisons, cost) < ``asr_kd.conf`` (the
config schema) < ``asr_kd.pipeline`` (stages, report) < the command lines (the benchmarks among them: they measure
the library and record their results as the pipeline records its own). A module may import its own layer or lower
ones only; the schema loads no stage.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from asr_kd.pipeline.stages import STAGES

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("features", "decoding", "asr_kd")
COMMAND_LINES = ("asr_kd.cli", "asr_kd.score_cli", "asr_kd.bench")  # asr_kd.nn.export: a library module, thin main()


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Repository modules that ``name`` imports anywhere in its body (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a.b.c -> the longest repository module prefix
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


LAYERS = (  # bottom up; a module may import its own layer or a lower one
    ("features", 0),
    ("decoding", 1),
    ("asr_kd.corpus", 2.0),
    ("asr_kd.nn", 2.1),
    ("asr_kd.distillation", 2.2),
    ("asr_kd.evaluation", 2.3),
    ("asr_kd.conf", 3),
    ("asr_kd.pipeline", 4),
)


def _layer(module: str) -> float:
    if module in COMMAND_LINES:
        return 5
    for prefix, rank in sorted(LAYERS, key=lambda item: -len(item[0])):  # the longest prefix decides
        if module == prefix or module.startswith(prefix + "."):
            return rank
    if module == "asr_kd":
        return 2
    raise AssertionError(f"{module} belongs to no layer")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


TOP_LEVEL = {"recipes", "asr_kd", "features", "decoding", "tests", "pyproject.toml",  # the repository's layout
             "docs",
             "README.md", "ARCHITECTURE.md", ".gitignore", ".ci"}


def test_the_top_level_holds_only_the_fixed_entries() -> None:
    """A run's output committed by mistake (a stray exp/ from a command run in the repository root) shows here."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top = {line.split("/", 1)[0] for line in tracked.splitlines()}
    assert top <= TOP_LEVEL, f"unexpected top-level entries: {sorted(top - TOP_LEVEL)}"
    assert {"recipes", "asr_kd", "features", "decoding", "tests", "pyproject.toml"} <= top


def test_imports_point_down_the_layers() -> None:
    upward = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_the_layer_check_would_catch_an_upward_import(tmp_path: Path) -> None:
    """The checks above are only worth something if they can fail: a planted upward import is seen."""
    path = tmp_path / "model.py"
    path.write_text("from asr_kd.pipeline import stages\nfrom . import train\n")
    deps = _imports("asr_kd.nn.model", path, _modules())
    assert deps == {"asr_kd.pipeline.stages", "asr_kd.nn.train"}
    assert _layer("asr_kd.pipeline.stages") > _layer("asr_kd.nn.model")
    assert _layer("asr_kd.distillation.ensemble") > _layer("asr_kd.nn.train")  # the library's own layers too


def test_loading_the_schema_loads_no_stage_code() -> None:
    code = ("import sys; import asr_kd.conf.schema; "
            "print(sorted(m for m in sys.modules if m.startswith(('asr_kd.pipeline', 'asr_kd.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"KALDI_ROOT": "/tmp", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout


def test_every_recipe_lists_the_stages_in_order() -> None:
    for run_sh in sorted((REPO / "recipes").glob("*/run.sh")):
        listed = re.findall(r"^run_stage (\d+) (\w+)", run_sh.read_text(), flags=re.M)
        assert [(int(n), name) for n, name in listed] == list(enumerate(STAGES)), run_sh


def test_readme_stage_table_matches_the_stages() -> None:
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", (REPO / "README.md").read_text(), flags=re.M)
    assert [(int(n), name) for n, name in rows] == list(enumerate(STAGES))


def test_run_sh_help_lists_the_stages_from_the_code(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(REPO / "recipes" / "synth" / "run.sh"), "--help"], capture_output=True,
                         text=True, check=True, cwd=tmp_path,
                         env={"ASR_KD_VENV": str(Path(sys.executable).parent.parent), "PATH": "/usr/bin:/bin"}).stdout
    for i, name in enumerate(STAGES):
        assert re.search(rf"^#\s+{i} {name}\b", out, flags=re.M), (i, name, out)
    assert list(tmp_path.iterdir()) == []  # no hydra outputs/ left in the caller's directory
