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
                                 "capabilities.py", "transforms.py", "registry.py")]
    assert reaches(bottom, ("pprogen.models", "pprogen.inference", "pprogen.data", "pprogen.cli", "pprogen.engine")) == []
    assert reaches([ROOT / "data.py"], ("pprogen.models", "pprogen.inference", "pprogen.cli", "pprogen.engine")) == []
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
                private += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
