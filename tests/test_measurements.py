"""The measurements page is generated from the files the benchmarks write: ``benchmarks/common.py``'s ``record`` writes
a result file (command, date, machine, commit, tables, notes) atomically, every benchmark script calls it, every
result file belongs to a script that exists, and ``docs/_ext/pprogen_docs.py`` renders each file's tables into the
page with every figure in it (and each anchor the guides link to). No Sphinx needed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    return _load("benchmarks_common", ROOT / "benchmarks" / "common.py")


@pytest.fixture(scope="module")
def ext():
    return _load("pprogen_docs", DOCS / "_ext" / "pprogen_docs.py")


def _fake_repo(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """A folder with ``docs/`` and ``benchmarks/`` holding ``scripts`` (name -> docstring); returns its docs."""
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for name, doc in scripts.items():
        (tmp_path / "benchmarks" / f"{name}.py").write_text(f'"""{doc}"""\n\nrecord(__file__, [])\n')
    (tmp_path / "docs").mkdir()
    return tmp_path / "docs"


# --- the record helper -------------------------------------------------------------------------------------------

def test_record_writes_command_date_machine_commit_tables_and_notes(common, tmp_path, monkeypatch):
    script = tmp_path / "bench_fake.py"
    script.write_text('"""A fake benchmark."""\n')
    monkeypatch.setattr("sys.argv", [str(script), "--rounds", "3", "--label", "a b"])
    monkeypatch.delenv(common.NO_RECORD, raising=False)
    rows = common.table("step time", ["contender", "median ms", "ratio"], [["hand", "1.234", 1.0], ["pprogen", 2, None]])
    path = common.record(script, [rows], ["a note"], args=argparse.Namespace(rounds=3, out=Path("/x")),
                         folder=tmp_path / "results")
    assert path == tmp_path / "results" / "bench_fake.json"
    data = json.loads(path.read_text())
    assert data["script"] == "benchmarks/bench_fake.py"
    assert data["command"] == "python benchmarks/bench_fake.py --rounds 3 --label 'a b'"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", data["date"])
    machine = data["machine"]
    assert set(machine) == {"platform", "cpu", "logical_cores", "torch_threads", "device", "torch", "pyro", "python"}
    import pyro
    import torch

    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__ and machine["pyro"] == pyro.__version__
    assert machine["torch_threads"] == torch.get_num_threads() and machine["logical_cores"] >= 1
    git = data["git"]
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["uncommitted_changes"], bool))
    assert data["arguments"] == {"rounds": 3, "out": "/x"}
    assert data["tables"] == [{"title": "step time", "columns": ["contender", "median ms", "ratio"],
                               "rows": [["hand", "1.234", 1.0], ["pprogen", 2, None]]}]
    assert data["notes"] == ["a note"]
    text = path.read_text()  # sorted keys, one row a line
    assert text.index('"arguments"') < text.index('"command"') < text.index('"tables"')
    assert '    ["hand", "1.234", 1.0],\n' in text


def test_a_gpu_run_or_a_variant_goes_to_its_own_file(common):
    assert common.result_file("benchmarks/bench_accel.py") == "bench_accel.json"
    assert common.result_file("benchmarks/bench_accel.py", device="cpu") == "bench_accel.json"
    assert common.result_file("benchmarks/bench_accel.py", device="cuda") == "bench_accel-cuda.json"
    assert common.result_file("bench_gan_modes.py", "grid25", "cuda:0") == "bench_gan_modes-grid25-cuda.json"


def test_record_is_atomic_and_writes_only_for_the_program_being_run(common, tmp_path, monkeypatch):
    script = tmp_path / "bench_fake.py"
    script.write_text("")
    folder = tmp_path / "results"
    result = [common.table("t", ["a"], [[1]])]
    monkeypatch.delenv(common.NO_RECORD, raising=False)
    monkeypatch.setattr("sys.argv", [str(tmp_path / "other.py")])  # a test or another script calling main()
    assert common.record(script, result, folder=folder) is None and not folder.exists()
    monkeypatch.setattr("sys.argv", [str(script)])
    monkeypatch.setenv(common.NO_RECORD, "1")
    assert common.record(script, result, folder=folder) is None and not folder.exists()
    monkeypatch.delenv(common.NO_RECORD)
    path = common.record(script, result, folder=folder)
    before = path.read_text()
    replaced = []

    def crash(src, dst):  # the process dies between writing the temporary file and moving it into place
        replaced.append((Path(src).parent, Path(dst)))
        raise OSError("killed")

    monkeypatch.setattr(common.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        common.record(script, [common.table("t", ["a"], [[2]])], folder=folder)
    assert replaced == [(folder, path)]  # written beside the result, then moved over it
    assert path.read_text() == before  # the previous result is whole
    assert sorted(p.name for p in folder.iterdir()) == ["bench_fake.json"]  # and no temporary file is left


def test_a_table_refuses_ragged_rows_and_objects(common):
    with pytest.raises(ValueError, match="a row of 1 cells under 2 columns"):
        common.table("t", ["a", "b"], [["x"]])
    with pytest.raises(TypeError, match="give a string or number"):
        common.table("t", ["a"], [[object()]])


# --- the renderer ------------------------------------------------------------------------------------------------

def test_a_result_file_renders_as_the_expected_markdown_table(common, ext, tmp_path, monkeypatch):
    docs = _fake_repo(tmp_path, {"bench_fake": "A fake benchmark: two contenders.\n\nRun: ``python "
                                               "benchmarks/bench_fake.py --rounds 3``.\n"})
    monkeypatch.setattr(common, "git_commit", lambda root=None: {"commit": "0123456789abcdef" * 2 + "01234567",
                                                                 "uncommitted_changes": False})
    content = common.make_record("bench_fake.py", [common.table("step time, *2* threads", ["contender", "median_ms",
                                                                                          "ratio"],
                                                                [["hand", "1.234", 1.0], ["a|b", 2, None],
                                                                 ["`x_y`", 0.1234567891, "-"]])],
                                 notes=["one note"], argv=["bench_fake.py", "--rounds", "3"])
    common.write_record(content, docs.parent / "benchmarks" / "results" / "bench_fake.json")
    [(path, data)] = ext.benchmark_results(docs.parent)["bench_fake"]
    assert ext.markdown_table(data["tables"][0]) == (
        "| contender | median\\_ms | ratio |\n"
        "| --- | --- | --- |\n"
        "| hand | 1.234 | 1 |\n"
        "| a\\|b | 2 | - |\n"
        "| `x_y` | 0.123457 | - |")
    page = ext.measurements_page(docs, topics=[]).read_text()
    assert "#### `bench_fake.py`\n\n*A fake benchmark: two contenders.*\n" in page
    assert "- command: `python benchmarks/bench_fake.py --rounds 3`" in page
    assert f"- date: {data['date']}; commit: `0123456789`\n" in page
    assert "**step time, \\*2\\* threads**\n\n| contender | median\\_ms | ratio |" in page
    assert "- one note" in page


def test_a_script_without_a_result_shows_as_not_yet_recorded_with_its_command_and_its_history(ext, tmp_path):
    docs = _fake_repo(tmp_path, {
        "bench_new": "A new benchmark.\n\nRun: ``python benchmarks/bench_new.py --fast``.\n\nHistory\n-------\n\n"
                     "2026-01-01: it took 3.25 s.\n",
    })
    page = ext.measurements_page(docs, topics=[]).read_text()
    assert "## Other\n\n### Other benchmarks\n" in page  # a script no topic names still has its section
    section = page.split("#### `bench_new.py`\n\n*A new benchmark.*", 1)[1]
    assert "Not yet recorded" in section and "`python benchmarks/bench_new.py --fast`" in section
    assert "##### History" in section and "2026-01-01: it took 3.25 s." in section


def test_a_result_file_without_its_script_fails_the_build(common, ext, tmp_path):
    docs = _fake_repo(tmp_path, {"bench_kept": "Kept."})
    content = common.make_record("bench_gone.py", [common.table("t", ["a"], [[1]])], argv=["bench_gone.py"])
    common.write_record(content, docs.parent / "benchmarks" / "results" / "bench_gone.json")
    with pytest.raises(ValueError, match=r"bench_gone.json comes from benchmarks/bench_gone.py, which does not exist"):
        ext.measurements_page(docs, topics=[])
    (docs.parent / "benchmarks" / "results" / "bench_gone.json").unlink()
    content = common.make_record("bench_kept.py", [common.table("t", ["a"], [[1]])], argv=["bench_kept.py"])
    common.write_record(content, docs.parent / "benchmarks" / "results" / "bench_keptx.json")  # another name
    with pytest.raises(ValueError, match=r"bench_keptx.json holds a result of benchmarks/bench_kept.py"):
        ext.measurements_page(docs, topics=[])


# --- the repository's own scripts and result files ---------------------------------------------------------------

def _calls_record(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "record") or (
                    isinstance(func, ast.Attribute) and func.attr == "record"):
                return True
    return False


def test_every_benchmark_script_records_what_it_prints(ext):
    scripts = ext.benchmark_scripts(ROOT)
    assert {p.name for p in scripts} == {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"common.py"}
    assert len(scripts) >= 20
    silent = [p.name for p in scripts if not _calls_record(p)]
    assert not silent, f"these benchmarks write no result file (call common.record at the end): {silent}"


def test_every_result_file_names_an_existing_script(ext):
    files = sorted(RESULTS.glob("*.json"))
    assert files, "no result file in benchmarks/results"
    for path in files:
        data = json.loads(path.read_text())
        script = ROOT / data["script"]
        assert script.is_file() and script.parent == ROOT / "benchmarks", path.name
        assert path.stem == script.stem or path.stem.startswith(script.stem + "-"), path.name
        assert data["command"].startswith(f"python {data['script']}"), path.name
    assert sum(len(v) for v in ext.benchmark_results(ROOT).values()) == len(files)


@pytest.fixture(scope="module")
def page(ext, tmp_path_factory):
    """The measurements page generated from the repository's own scripts and result files (in a copy of docs/)."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(DOCS, root / "docs", ignore=shutil.ignore_patterns("_build", "_generated"))
    (root / "benchmarks").symlink_to(ROOT / "benchmarks")
    return ext.measurements_page(root / "docs").read_text()


def test_the_page_holds_every_figure_of_every_result_file(ext, page):
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        assert f"Recorded in `benchmarks/results/{path.name}`" in page
        assert f"`{data['command']}`" in page, path.name
        for result_table in data["tables"]:
            assert ext.markdown_table(result_table) in page, (path.name, result_table["title"])
            for row in result_table["rows"]:
                for cell in row:
                    assert ext._number(cell) in page, (path.name, cell)


def test_every_script_has_its_section_and_the_unrecorded_ones_say_so(ext, page):
    recorded = ext.benchmark_results(ROOT)
    for script in ext.benchmark_scripts(ROOT):
        heading = f"#### `{script.name}`\n"
        assert page.count(heading) == 1, script.name
        section = page.split(heading, 1)[1].split("\n#### ", 1)[0]
        assert ("Not yet recorded" in section) == (script.stem not in recorded), script.name


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_anchors_the_guides_link_to_are_headings_of_the_page(page):
    text = page + (DOCS / "results" / "measurements.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#{1,3} (.+)$", text, re.M)}
    linked = set()
    for source in [*DOCS.rglob("*.md"), ROOT / "README.md"]:
        if "_generated" in source.parts or "_build" in source.parts:
            continue
        linked |= set(re.findall(r"measurements\.md#([\w-]+)", source.read_text()))
    assert linked, "no guide links to a section of measurements.md"
    assert linked <= anchors, sorted(linked - anchors)
