"""Docs that cannot rot: every Python block and every ``pprogen`` command of the README and of ``docs/`` runs here,
as written, page by page; every public name has a docstring and a place in the API reference; the figures the
README quotes agree with the files they come from; the two set-up commands stay what CI runs; and (marked slow,
skipped without Sphinx) the site builds with warnings as errors.

A page's blocks run in order in one fresh folder, Python blocks in one namespace, so a later block may use what an
earlier one made (a run folder, a file). In a ```bash or ```console block each line that starts with ``pprogen`` is
run through :func:`pprogen.cli.main` and must succeed; other lines (``pip``, ``torchrun``, ``sphinx-build``) are
shown, not run. A block preceded by ``<!-- docs-test: skip REASON -->`` is not run (data that is not here, a GPU,
several processes): the reason is the documentation of why.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->", re.S)
FENCE = re.compile(r"^(`{3,})\s*\{?([\w-]*)\}?\s*(.*)$")
SHELL = {"bash", "console", "sh", "shell"}
API_DIRECTIVE = r"^\.\. (?:auto\w+|py:\w+):: ([\w.]+)"  # the names docs/api/*.md documents
SLOW_PAGES = {  # pages whose blocks took more than about 10 s together on a shared 2-core machine (marked slow)
    "README.md", "docs/getting-started.md", "docs/guides/command-line.md", "docs/guides/evidence.md",
}


def _load_extension():
    spec = importlib.util.spec_from_file_location("pprogen_docs", DOCS / "_ext" / "pprogen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Block:
    lang: str
    code: str
    line: int
    skip: str | None


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, with the skip reason written just before each (if any)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i].strip())
        if not match:
            i += 1
            continue
        fence, lang, start = match.group(1), match.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        before = "\n".join(lines[max(0, start - 3):start])
        skip = SKIP.search(before)
        out.append(Block(lang, "\n".join(body), start + 1, skip.group(1).strip() or "no reason given" if skip else None))
        i += 1
    return out


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, less the generated ones and the build."""
    found = [README]
    for path in sorted(DOCS.rglob("*.md")):
        parts = path.relative_to(DOCS).parts
        if parts[0] in ("_build", "_generated"):
            continue
        found.append(path)
    return found


def runnable(block: Block) -> bool:
    if block.skip is not None:
        return False
    if block.lang == "python":
        return True
    return block.lang in SHELL and any(cmd for cmd, _ in commands(block.code))


def commands(code: str) -> list[tuple[list[str], dict[str, str]]]:
    """The ``pprogen`` command lines of a shell block as (argv after ``pprogen``, environment assignments)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words and words[0] == "pprogen":
            out.append((words[1:], env))
    return out


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _page_params():
    params = []
    for path in pages():
        if any(runnable(b) for b in blocks(path.read_text())):
            marks = [pytest.mark.slow] if _page_id(path) in SLOW_PAGES else []
            params.append(pytest.param(path, id=_page_id(path), marks=marks))
    return params


@pytest.fixture
def restored_registries():
    """Pages may register models and data sets: both registries are put back as they were afterwards."""
    from pprogen import registry
    from pprogen.data import registry as data_registry

    saved = [(r, dict(r)) for r in (registry._REGISTRY, data_registry._REGISTRY)]
    yield
    for table, content in saved:
        table.clear()
        table.update(content)


def run_page(path: Path, folder: Path, monkeypatch) -> list[tuple[int, float]]:
    """Run the page's blocks in order in ``folder``; returns (line, seconds) per block."""
    import matplotlib
    import torch

    from pprogen.cli import main

    matplotlib.use("Agg")
    monkeypatch.chdir(folder)
    shipped = ROOT / "leaderboard"
    namespace: dict = {"__name__": "__docs__"}
    timings = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the docs' advice for small models; the machines that run the tests are shared
    try:
        for block in blocks(path.read_text()):
            if not runnable(block):
                continue
            started = time.perf_counter()
            where = f"{_page_id(path)}, the block at line {block.line}"
            if block.lang == "python":
                try:
                    exec(compile(block.code, where, "exec"), namespace)
                except Exception as err:
                    raise AssertionError(f"{where} fails as written: {type(err).__name__}: {err}") from err
            else:
                for argv, env in commands(block.code):
                    for word in argv:  # a shipped folder of the repository is copied, never written into
                        name = re.match(r"leaderboard/(\w+)", word)
                        if name and (shipped / name.group(1)).is_dir() and not (folder / word).exists():
                            shutil.copytree(shipped / name.group(1), folder / "leaderboard" / name.group(1))
                    with monkeypatch.context() as env_patch:
                        for key, value in env.items():
                            env_patch.setenv(key, value)
                        code = main(argv)
                    assert code == 0, f"{where}: `pprogen {shlex.join(argv)}` exited with {code}"
            timings.append((block.line, time.perf_counter() - started))
    finally:
        torch.set_num_threads(threads)
    return timings


@pytest.mark.parametrize("path", _page_params())
def test_page_runs_as_written(path, tmp_path, monkeypatch, restored_registries, capsys):
    started = time.perf_counter()
    timings = run_page(path, tmp_path, monkeypatch)
    took = time.perf_counter() - started
    assert timings, f"{_page_id(path)} has no runnable block"
    each = ", ".join(f"line {line}: {seconds:.1f} s" for line, seconds in timings)
    print(f"{_page_id(path)}: {len(timings)} blocks in {took:.1f} s ({each})", file=sys.stderr)


def test_a_broken_block_fails(tmp_path, monkeypatch, restored_registries):
    """The runner is not a rubber stamp: a page whose block raises, or whose command exits non-zero, fails."""
    page = tmp_path / "broken.md"
    page.write_text("```python\nvalue = 1\n```\n\n```python\nassert value == 2, 'the docs say 2'\n```\n")
    with pytest.raises(AssertionError, match="the block at line 5 fails as written: AssertionError: the docs say 2"):
        run_page(page, tmp_path, monkeypatch)
    page.write_text("```bash\npprogen list  # runs\npprogen info no_such_model\n```\n")
    with pytest.raises(AssertionError, match="`pprogen info no_such_model` exited with 2"):
        run_page(page, tmp_path, monkeypatch)
    skipped = "<!-- docs-test: skip needs a GPU -->\n```bash\npprogen info no_such_model\n```\n"
    assert [b.skip for b in blocks(skipped)] == ["needs a GPU"] and not runnable(blocks(skipped)[0])


def test_every_page_with_code_is_run_and_every_skip_says_why():
    runs = {_page_id(p.values[0]) for p in _page_params()}
    assert "README.md" in runs and "docs/getting-started.md" in runs
    assert SLOW_PAGES <= runs, sorted(SLOW_PAGES - runs)
    for path in pages():
        for block in blocks(path.read_text()):
            assert block.skip != "no reason given", f"{_page_id(path)}:{block.line} skips a block without a reason"


# --- the README's promises ---------------------------------------------------------------------------------------

def test_readme_keeps_the_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    shell = [b.code.strip() for b in blocks(text) if b.lang in SHELL]
    assert "pip install . && pprogen train vae" in shell
    assert 'pip install ".[test]" && pytest' in shell
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == 'pip install ".[test]" && pytest'
    assert len(text.splitlines()) <= 250


def test_readme_figures_agree_with_the_shipped_leaderboard():
    """Each "`entry` NN.NN" the README's zoo table quotes is that entry's figure in leaderboard/ENTRY/summary.json."""
    text = README.read_text()
    table = [line for line in text.splitlines() if line.startswith("| [") and "docs/zoo/" in line]
    quoted = re.findall(r"`(\w+)` (\d+\.\d\d)\b", "\n".join(table))
    assert len(quoted) >= 6
    for entry, figure in quoted:
        summary = json.loads((ROOT / "leaderboard" / entry / "summary.json").read_text())
        assert f"{summary['leaderboard']['best']['nll']:.2f}" == figure, entry   # the shipped folder's score


def test_readme_zoo_table_names_registered_models_of_their_family():
    import pprogen
    from pprogen.registry import get_card

    for line in README.read_text().splitlines():
        family = re.match(r"\| \[[^\]]+\]\(docs/zoo/(\w+)\.md\) \| ([^|]+)\|", line)
        if family:
            names = re.findall(r"`(\w+)`", family.group(2))
            assert names and all(get_card(n).kind == family.group(1) for n in names), line
            assert (DOCS / "zoo" / f"{family.group(1)}.md").is_file()
    assert pprogen.list_models()


def test_readme_and_docs_links_point_at_files_that_exist():
    link = re.compile(r"\]\(((?!https?:|#|mailto:)[^)\s#]+)")
    for path in pages():
        for target in link.findall(path.read_text()):
            assert (path.parent / target).exists(), f"{_page_id(path)} links to {target}, which does not exist"


# --- the API reference -------------------------------------------------------------------------------------------

def _public(module) -> list[str]:
    return list(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))


def test_every_public_name_has_a_docstring_and_a_place_in_the_api_reference():
    import pprogen
    import pprogen.data
    import pprogen.engine
    import pprogen.inference
    import pprogen.models

    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    documented = set(re.findall(API_DIRECTIVE, reference, re.M))
    missing_doc, missing_ref = [], []
    for module in (pprogen, pprogen.inference, pprogen.engine, pprogen.models, pprogen.data):
        for name in _public(module):
            if f"{module.__name__}.{name}" not in documented:
                missing_ref.append(f"{module.__name__}.{name}")
            obj = getattr(module, name)
            needs_doc = module in (pprogen, pprogen.inference, pprogen.engine)
            if needs_doc and (inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj)):
                if not (obj.__doc__ or "").strip():
                    missing_doc.append(f"{module.__name__}.{name}")
    assert not missing_ref, f"not in docs/api/*.md: {missing_ref}"
    assert not missing_doc, f"no docstring: {missing_doc}"


def test_the_api_reference_documents_no_name_that_does_not_exist():
    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for target in re.findall(API_DIRECTIVE, reference, re.M):
        module, _, name = target.rpartition(".")
        try:
            obj = importlib.import_module(target)
        except ImportError:
            obj = getattr(importlib.import_module(module), name, None)
        assert obj is not None, f"docs/api documents {target}, which does not exist"


def test_the_estimator_and_guide_tables_name_every_estimator_and_guide():
    from pprogen.inference.estimators import ELBOS
    from pprogen.inference.guides import GUIDES

    text = (DOCS / "guides" / "estimators-and-guides.md").read_text()
    rows = {m for m in re.findall(r"^\| `(\w+)`", text, re.M)}
    assert set(ELBOS) <= rows, sorted(set(ELBOS) - rows)
    assert set(GUIDES) <= rows, sorted(set(GUIDES) - rows)


# --- generated pages ---------------------------------------------------------------------------------------------

def test_generated_pages_cover_every_model_and_every_figure(tmp_path):
    """The zoo pages come from the registry: every registered model has its section, with its card's reference and
    the measured figure of each shipped leaderboard entry of it; every figure has its provenance."""
    import pprogen
    from pprogen.registry import get_card

    ext = _load_extension()
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build", "_generated"))
    (tmp_path / "leaderboard").symlink_to(ROOT / "leaderboard")
    written = ext.generate(docs)
    assert all(p.is_relative_to(docs / "_generated") for p in written)
    zoo = {p.stem: p.read_text() for p in (docs / "_generated" / "zoo").glob("*.md")}
    for name in pprogen.list_models():
        card = get_card(name)
        page = zoo[card.kind]
        assert f"(zoo-{name})=" in page and f"pprogen train {name}" in page, name
    for entry in ext.leaderboard_entries(ROOT):
        model = entry["board"]["spec"]["model"]
        assert f"| `{entry['entry']}` |" in zoo[get_card(model).kind]
        assert f"{entry['board']['best']['nll']:.2f}" in zoo[get_card(model).kind]
    board = (docs / "_generated" / "leaderboard.md").read_text()
    assert (ROOT / "leaderboard" / "leaderboard.md").read_text().strip() in board
    figures = (docs / "_generated" / "figures.md").read_text()
    for picture in (DOCS / "figures").glob("*.png"):
        assert f"(../figures/{picture.name})" in figures


def test_a_figure_without_provenance_fails_the_build(tmp_path):
    ext = _load_extension()
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build", "_generated"))
    (tmp_path / "leaderboard").symlink_to(ROOT / "leaderboard")
    (docs / "figures" / "new.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no record of \['new.png'\]"):
        ext.figures_page(docs)


# --- the site ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    """``sphinx-build -W --keep-going``: any warning (a broken link, a docstring that is not valid RST, a figure
    without provenance) fails; the site has the pages the guides promise and the reference shows the parameters."""
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                             str(out), "-d", str(tmp_path / "doctrees")], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    took = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-5000:]
    html = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html") if "_modules" not in p.parts)
    assert len(html) >= 15, html
    for page in ("getting-started.html", "guides/estimators-and-guides.html", "guides/evidence.html",
                 "zoo/latent.html", "api/inference.html", "results/leaderboard.html", "changelog.html"):
        assert page in html
    api = (out / "api" / "inference.html").read_text()
    for name, parameter in [("log_marginal", "num_samples"), ("fit", "valid_data"), ("make_elbo", "name"),
                            ("make_guide", "model"), ("ais", "num_steps"), ("bdmc", "num_chains"),
                            ("evaluate", "method")]:
        assert f'id="pprogen.inference.{name}"' in api, name
        signature = api.split(f'id="pprogen.inference.{name}"', 1)[1].split("</dt>", 1)[0]
        assert parameter in signature, (name, parameter)
    print(f"strict Sphinx build: {len(html)} pages in {took:.0f} s", file=sys.stderr)
