"""The one pipeline definition: ``components.stage_api.STAGES`` against ``dvc.yaml``.

- the same stages in the same order (the CLI, the flow, the report and the help read STAGES);
- each stage's outs are the paths the stage writes (``StagePaths`` of params.yaml);
- each stage's deps cover every module of ``components/`` it imports, directly or not, so a
  code change reruns the stage (``components/config.py``, whose defaults fill any key
  params.yaml leaves out, included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from components.config import load_config
from components.stage_api import EVALUATION_STAGES, STAGE_NAMES, STAGES, StagePaths

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of module ``components.x.y`` under the checkout (None outside components)."""
    if not name.startswith("components"):
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every ``components...`` module ``path`` imports (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("components")}


def import_closure(module: str) -> set[Path]:
    """Files of ``module`` and of everything in components/ it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
        parts = path.relative_to(ROOT).with_suffix("").parts
        for depth in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:depth]))
    return seen


def has_code(path: Path) -> bool:
    """False for a package ``__init__.py`` that holds only a docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
               for node in body)


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def test_stage_list_equals_dvc_yaml_in_order():
    assert list(DVC) == list(STAGE_NAMES)
    assert set(EVALUATION_STAGES) <= set(STAGE_NAMES)
    for stage in STAGES:
        assert DVC[stage.name]["cmd"] == f"simclr {stage.name}"
        assert module_file(f"components.stages.{stage.module}") is not None, stage


def expected_outs(name: str) -> set[str]:
    """What stage ``name`` writes, from StagePaths of params.yaml (the runner's outputs/<stage>)."""
    paths = StagePaths.of(load_config(ROOT / "params.yaml"))
    outs = {paths.stage_dir(name)}
    if name == "ingest":
        outs |= {paths.datasets, paths.transfer}
    elif name == "subsets":
        outs.add(paths.subsets)
    return {str(path) for path in outs}


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_outs_are_the_paths_the_stage_writes(name):
    outs = {next(iter(out)) if isinstance(out, dict) else out for out in DVC[name].get("outs", [])}
    assert outs == expected_outs(name)
    paths = StagePaths.of(load_config(ROOT / "params.yaml"))
    assert paths.timings_file(name).parent not in {Path(out) for out in outs}  # timings untracked


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_NAMES)
def test_deps_cover_every_module_the_stage_imports(stage):
    deps = list(DVC[stage.name].get("deps", []))
    files = import_closure(f"components.stages.{stage.module}")
    assert ROOT / "components" / "config.py" in files
    # the runner decides where outputs land (its MLflow logging is not result-changing)
    files.add(ROOT / "components" / "stages" / "runner.py")
    missing = sorted(str(path.relative_to(ROOT)) for path in files
                     if has_code(path) and not covered(path, deps))
    assert not missing, f"dvc.yaml stage {stage.name}: add to deps {missing}"


EVAL_RUNTIME = ROOT / "components" / "evaluation" / "device.py"


@pytest.mark.parametrize("stage", [s for s in STAGES if EVAL_RUNTIME in import_closure(
    f"components.stages.{s.module}")], ids=lambda s: s.name)
def test_stages_on_the_eval_runtime_depend_on_the_pretraining_precision(stage):
    """EvalRuntime.of reads pretrain.precision and pretrain.channels_last: a change reruns them."""
    params = {p if isinstance(p, str) else next(iter(p)) for p in DVC[stage.name]["params"]}
    for key in ("pretrain.precision", "pretrain.channels_last"):
        assert key in params or "pretrain" in params, f"dvc.yaml stage {stage.name}: add {key}"


def test_every_stage_depends_on_the_config_schema_and_the_contract():
    """Schema defaults fill keys params.yaml leaves out: changing one must rerun the stages."""
    for name, stage in DVC.items():
        assert {"components/config.py", "components/stage_api.py",
                "components/stages/runner.py"} <= set(stage["deps"]), name


def test_the_contract_test_catches_a_stage_missing_from_one_list():
    """A stage added to STAGES only (or to dvc.yaml only) breaks the first test's equality."""
    assert list(DVC)[:-1] != list(STAGE_NAMES)
    assert [*DVC, "new-stage"] != list(STAGE_NAMES)


@pytest.mark.parametrize("package", ["components/tracking", "components/evaluation",
                                     "components/stage_api.py"])
def test_lower_layers_import_nothing_from_the_stages(package):
    """tracking, evaluation and the stage contract sit below the stages (and the CLI)."""
    root = ROOT / package
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    above = ("components.stages",) + (("components.tracking", "components.evaluation")
                                      if package.endswith("stage_api.py") else ())
    offending = {str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path)
                                                     if name.startswith(above))
                 for path in files}
    assert not any(offending.values()), offending
