"""The shape of the code that the README's Architecture section promises: a quick command line, stages
that do not import each other sideways, configs that refuse a bad choice however they are built."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from crammer.errors import CrammerError
from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src" / "crammer"


def _imported_modules(path: Path) -> set[str]:
    """Every crammer module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("crammer")}


@pytest.mark.parametrize("package, forbidden", [("train", "crammer.eval"), ("eval", "crammer.train"),
                                                ("model", "crammer.train"), ("model", "crammer.eval"),
                                                ("data", "crammer.train"), ("data", "crammer.model"),
                                                ("export", "crammer.train"), ("export", "crammer.eval"),
                                                # readers of a run folder never import the stages that write it
                                                ("train", "crammer.hub"), ("hub", "crammer.eval"),
                                                ("hub", "crammer.train"), ("hub", "crammer.pipeline"),
                                                ("report", "crammer.pipeline"), ("report", "crammer.hub"),
                                                # the recipe lab sits on top, beside pipeline: nothing below imports it
                                                *[(package, "crammer.lab") for package in
                                                  ("data", "model", "train", "eval", "hub", "report", "pipeline")]])
def test_stages_do_not_import_each_other_sideways(package, forbidden):
    offenders = {str(path.relative_to(SRC)): sorted(m for m in _imported_modules(path) if m.startswith(forbidden))
                 for path in (SRC / package).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_run_folder_module_sits_at_the_bottom():
    """Every stage, the report and the card read a run folder's files through `crammer.runfiles`, which
    imports only the shared modules (and no torch), so no arrow can run back up through it."""
    allowed = {"crammer.errors", "crammer.io"}
    assert _imported_modules(SRC / "runfiles.py") <= allowed
    assert "torch" not in _modules_loaded_by("import crammer.runfiles")


def _import_graph() -> dict[str, set[str]]:
    """Package (or top-level module) -> the packages it imports, over every file of src/crammer."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        node = rel[0].removesuffix(".py")
        targets = {m.split(".")[1] for m in _imported_modules(path) if m.count(".") >= 1}
        graph.setdefault(node, set()).update(targets - {node})
    return graph


def test_no_package_imports_itself_back_through_another():
    """No cycles between packages (`pipeline -> report -> pipeline` was one): a depth-first search over
    the import graph finds no way back."""
    graph = _import_graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target in graph:
                visit(target, path + [target])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return set(out.stdout.split())


def test_the_command_line_starts_without_torch_or_transformers():
    loaded = _modules_loaded_by("import crammer.cli")
    assert "torch" not in loaded and "transformers" not in loaded


@pytest.mark.parametrize("command", [[], ["data", "prepare"], ["pretrain"], ["bench"], ["plan"], ["plot"],
                                     ["glue"], ["finetune"], ["run"], ["report"], ["validate"], ["export"],
                                     ["sweep"], ["compare"]])
def test_help_of_every_command_needs_no_torch(command):
    code = ("from crammer.cli import main\n"
            f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit as e:\n    assert e.code == 0\n")
    loaded = _modules_loaded_by(code)
    assert "torch" not in loaded and "transformers" not in loaded and "tokenizers" not in loaded


def _configs():
    from crammer.data.config import CorpusConfig
    from crammer.eval.config import GlueConfig
    from crammer.train.config import PretrainConfig, ScheduleConfig, StreamConfig

    return [
        (lambda: PretrainConfig(precision="bf17"), "precision='bf17'"),
        (lambda: PretrainConfig(schedule=ScheduleConfig(lr="triangel")), "schedule.lr='triangel'"),
        (lambda: PretrainConfig(data=StreamConfig(order="shufled")), "data.order='shufled'"),
        (lambda: GlueConfig(schedule="cosin"), "schedule='cosin'"),
        (lambda: GlueConfig(precision="fp16"), "precision='fp16'"),
        (lambda: CorpusConfig(order="easy"), "order"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_every_literal_field_is_checked_however_the_config_is_built(index):
    build, field = _configs()[index]
    with pytest.raises(CrammerError, match=field.replace("(", r"\(")):
        build()


def test_a_valid_python_built_pretrain_config_validates():
    from crammer.train.config import PretrainConfig

    assert PretrainConfig(precision="bf16").validate().precision == "bf16"
    with pytest.raises(CrammerError, match="unknown model config key 'layers'"):
        PretrainConfig(model_overrides=("layers=2",)).validate()
    with pytest.raises(CrammerError, match="unknown model preset 'huge'"):
        PretrainConfig(model="huge").validate()
