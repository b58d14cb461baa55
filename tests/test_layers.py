"""The house's layering, from the imports in the source: lower layers never import upper ones."""

import ast
from pathlib import Path

import pprogen

ROOT = Path(pprogen.__file__).parent


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("pprogen")}


def reaches(files, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{p.relative_to(ROOT)} imports {name}" for p in files for name in imports_of(p)
                  if name.startswith(forbidden))


def test_lower_layers_do_not_import_upper_ones():
    models = list((ROOT / "models").glob("*.py"))
    inference = list((ROOT / "inference").glob("*.py"))
    bottom = [ROOT / f for f in ("distributed.py", "runs.py", "errors.py", "nn.py", "mcmc.py", "dag.py",
                                 "capabilities.py", "registry.py", "version.py")] + list((ROOT / "transforms").glob("*.py"))
    bottom += list((ROOT / "runfiles").glob("*.py"))
    assert reaches(bottom, ("pprogen.models", "pprogen.inference", "pprogen.data", "pprogen.cli", "pprogen.engine")) == []
    data = list((ROOT / "data").rglob("*.py"))
    assert len(data) > 1  # the data package, every file of it
    assert reaches(data, ("pprogen.models", "pprogen.inference", "pprogen.cli", "pprogen.engine")) == []
    assert reaches(models, ("pprogen.inference", "pprogen.data", "pprogen.cli", "pprogen.engine")) == []
    assert reaches(inference, ("pprogen.models", "pprogen.cli", "pprogen.engine")) == []
    # what people do with a trained model serves any program: never the zoo, the data or the run engine
    assert reaches([ROOT / "latent.py", ROOT / "impute.py"],
                   ("pprogen.models", "pprogen.data", "pprogen.cli", "pprogen.engine")) == []


def test_zoo_files_do_not_reach_into_each_others_private_names():
    private = []
    for path in (ROOT / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pprogen.models"):
                private += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def _private_imports(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """``from M import _name`` (and ``import M._x``) in ``path`` for modules M under ``prefixes``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefixes):
            found += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            found += [f"{path.name}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
    return found


def test_trainer_files_import_no_other_trainer_and_the_cli_only_the_engine_s_face():
    trainers = [p for p in (ROOT / "engine" / "trainers").glob("*.py") if p.name != "__init__.py"]
    assert len(trainers) >= 5  # svi, adversarial, em, nuts, reverse_kl
    assert reaches(trainers, ("pprogen.engine.trainers", "pprogen.cli")) == []
    engine = list((ROOT / "engine").rglob("*.py"))
    assert reaches(engine, ("pprogen.cli",)) == []
    # the CLI: the engine's package face only (pprogen.engine and the options it declares), no private name
    deep = [n for n in imports_of(ROOT / "cli.py") if n.startswith("pprogen.engine.")
            and n.split(".")[2] not in ("options",) and not hasattr(__import__("pprogen.engine").engine, n.split(".")[2])]
    assert deep == []
    assert _private_imports(ROOT / "cli.py", ("pprogen",)) == []


def test_no_module_imports_another_module_s_private_name():
    package = [p for p in ROOT.rglob("*.py")]
    found = [f for p in package for f in _private_imports(p, ("pprogen",))]
    assert found == []


def test_no_test_imports_a_private_name_of_the_cli_or_the_engine():
    tests = Path(__file__).parent
    found = [f for p in tests.rglob("*.py") for f in _private_imports(p, ("pprogen.cli", "pprogen.engine"))]
    assert found == []


def test_the_cli_and_the_engine_s_face_do_not_branch_on_a_trainer_or_a_kind():
    """Dispatch goes through the trainer registry: no comparison with a trainer's or a model kind's name in
    cli.py or engine/__init__.py, and no function in cli.py longer than 40 lines."""
    from pprogen.engine import TRAINERS
    from pprogen.registry import KINDS

    names = set(TRAINERS) | set(KINDS)
    for path in (ROOT / "cli.py", ROOT / "engine" / "__init__.py", ROOT / "engine" / "lifecycle.py",
                 ROOT / "engine" / "loaded.py", ROOT / "engine" / "ship.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                assert not names & set(c for c in constants if isinstance(c, str)), (path.name, ast.unparse(node))
    long = [n.name for n in ast.walk(ast.parse((ROOT / "cli.py").read_text()))
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40]
    assert long == []
