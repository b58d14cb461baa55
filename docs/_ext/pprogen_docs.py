"""Documentation pages generated from the project's own files, written at the start of every Sphinx build.

- ``zoo/KIND``: one page per model family (the registry's kinds), one section per registered model, from its card
  (``pprogen.registry.get_card``: story, reference, defaults, data, how to train it) and, where ``leaderboard/``
  ships a trained entry of that model, its measured figure from the entry's ``summary.json``;
- ``results/leaderboard.md``: ``leaderboard/leaderboard.md`` (written by ``benchmarks/likelihood_leaderboard.py``)
  with each entry's provenance from its ``summary.json`` and ``config.json``;
- ``results/figures.md``: every picture in ``docs/figures/`` with the command, date and machine recorded for it in
  ``docs/results/figures.toml`` (a picture without a record, or a record without its picture, fails the build);
- ``results/measurements.md``: every script of ``benchmarks/`` under its topic, with the result files it wrote
  (``benchmarks/results/*.json``: command, date, machine, commit, tables, notes; a script without one is shown as not
  yet recorded, a result file without its script fails the build) and the dated notes of its docstring's History;
- ``_generated/options.md``: the ``pprogen train`` options table, from ``pprogen.engine.options.OPTIONS``;
- ``_generated/datasets.md``: the data sets table, from the data-set registry's cards.

Everything is written under ``docs/_generated/`` (kept out of version control); the pages in the repository
(``docs/zoo/KIND.md``, ``docs/results/leaderboard.md``, ``figures.md`` and ``measurements.md``) include it, so a
model registered tomorrow appears in its family's page with no edit to the docs (a new family needs its two-line
page, and the build says so), and a benchmark run again appears with its new figures. :func:`generate` needs no
Sphinx (the tests call it); :func:`setup` connects it to the build.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

GENERATED = "_generated"

FAMILIES = {  # the registry's kinds, in the order the zoo shows them: (page title, one line of what they are)
    "latent": ("Latent-variable models", "A latent z drawn from a prior and the data drawn given it; trained by "
               "SVI with an amortized guide, scored by importance sampling (or exactly, for PPCA)."),
    "autoregressive": ("Autoregressive models", "p(x) as a product of one-dimensional conditionals in a fixed "
                       "order: exact log-likelihood, observed at one Pyro site with an empty guide."),
    "flow": ("Normalizing flows", "An invertible map of a standard Normal: exact log p(x) by the change of "
             "variables, as a Pyro ``TransformedDistribution`` observed at one site."),
    "mixture": ("Mixtures", "A discrete component enumerated out exactly (``TraceEnum_ELBO``); fitted by SVI, "
                "closed-form EM or NUTS."),
    "bayesnet": ("Bayesian networks", "A DAG of categorical nodes, one Pyro site per node; exact queries by "
                 "variable elimination, missing entries summed out."),
    "gan": ("GANs", "Implicit densities x = G(z), trained by the adversarial trainer and scored by sample "
            "metrics; each generator is still a Pyro program."),
    "autoencoder": ("Autoencoders", "Deterministic codes with a flat improper prior: no likelihood, scored by "
                    "reconstruction error; here to show what the VAE adds."),
}

_SPECIAL = re.compile(r"([\\*_\[\]<>#|{}$~])")


def _markdown_text(text: str, table: bool = False) -> str:
    """Plain card text as Markdown: `code spans` kept, every other character that Markdown reads escaped (in a
    table cell, a code span's pipes too)."""
    parts = re.split(r"(`[^`]+`)", " ".join(str(text).split()))
    return "".join((p.replace("|", "\\|") if table else p) if p.startswith("`") else _SPECIAL.sub(r"\\\1", p)
                   for p in parts)


def _cell(value: Any) -> str:
    return _markdown_text(str(value), table=True)


def _write(path: Path, text: str) -> Path:
    """Write only when the text changed, so that Sphinx rebuilds only what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _git_date(root: Path, path: Path) -> str | None:
    """The date of the last commit that touched ``path``, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path.relative_to(root))], cwd=root,
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def leaderboard_entries(root: Path) -> list[dict[str, Any]]:
    """Each shipped entry of ``root/leaderboard``: its folder name, ``summary.json`` and ``config.json``."""
    entries = []
    for summary_path in sorted((root / "leaderboard").glob("*/summary.json")):
        folder = summary_path.parent
        summary = json.loads(summary_path.read_text())
        if "leaderboard" not in summary:
            continue
        config = json.loads((folder / "config.json").read_text())
        entries.append({"entry": folder.name, "folder": folder, "summary": summary, "config": config,
                        "board": summary["leaderboard"]})
    return entries


def _nll_text(board: dict[str, Any]) -> str:
    best = board.get("best", {})  # the shipped folder's own evaluation, as leaderboard/leaderboard.md gives it
    method = "exact" if best.get("method", "exact") == "exact" else f"IS, K = {best.get('num_samples')}"
    text = f"{best.get('nll', board['nll']):.2f} ± {best.get('stderr', float('nan')):.2f} ({method})"
    refined = board.get("refined")
    if refined:
        text += f"; guide refined per image ({refined['refine_steps']} steps): {refined['nll']:.2f}"
    return text


def _config_text(spec: dict[str, Any]) -> str:
    settings = {**spec.get("args", {}), **spec.get("train", {})}
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def _model_section(name: str, card: Any, entries: list[dict[str, Any]], figures: Path) -> list[str]:
    lines = [f"(zoo-{name})=", f"## `{name}`", "", _markdown_text(card.story), ""]
    lines += [f"- **Reference:** {_markdown_text(card.reference) if card.reference else '-'}"]
    if card.default_target:
        lines += [f"- **Trains on:** the energy target `{card.default_target}` by reverse KL (`--target`: u1-u4 "
                  "or a Python function of z)"]
    else:
        lines += [f"- **Trains on:** `{card.default_data}` by default (`--data NAME|FILE`; "
                  "[data sets](../guides/data.md))"]
    if card.train_defaults:
        lines += ["- **Training defaults:** " + ", ".join(f"`{k}={v!r}`" for k, v in card.train_defaults.items())]
    lines += [f"- **In Python:** `pprogen.create_model({name!r}, **overrides)`", ""]
    if card.defaults:
        lines += ["| argument | default |", "| --- | --- |"]
        lines += [f"| `{k}` | {_cell(f'`{v!r}`')} |" for k, v in card.defaults.items()]
        lines += [""]
    lines += ["Train it, score it and draw from it:", "", "```bash", f"pprogen train {name} --out runs/{name}",
              f"pprogen evaluate runs/{name}", f"pprogen sample runs/{name}", "```", ""]
    if card.details is not None:
        lines += ["```text", card.details().rstrip(), "```", ""]
    mine = [e for e in entries if e["board"]["spec"].get("model") == name]
    if mine:
        lines += ["**Measured** on binarized MNIST (validation split; the shipped entries of `leaderboard/`, see "
                  "[the leaderboard](../results/leaderboard.md)):", "",
                  "| entry | configuration | valid NLL (nats) | literature (test) |", "| --- | --- | --- | --- |"]
        for e in mine:
            spec = e["board"]["spec"]
            literature = f"{spec['literature']} ({spec.get('source', '')})" if spec.get("literature") else "-"
            lines += [f"| `{e['entry']}` | {_cell(_config_text(spec))} | {_cell(_nll_text(e['board']))} | "
                      f"{_cell(literature)} |"]
        lines += [""]
        for e in mine:
            picture = figures / f"leaderboard_{e['entry']}.png"
            if picture.is_file():
                lines += [f"![samples of the shipped {e['entry']}](../figures/{picture.name})", ""]
    return lines


def zoo_pages(docs: Path) -> list[Path]:
    """``_generated/zoo/KIND.md`` for each family and ``_generated/zoo/index.md``, from the registry."""
    from pprogen.registry import KINDS, get_card, list_models

    entries = leaderboard_entries(docs.parent)
    cards = [get_card(n) for n in list_models()]
    if set(KINDS) - set(FAMILIES):
        raise ValueError(f"docs/_ext/pprogen_docs.py: FAMILIES lacks the registry's kinds "
                         f"{sorted(set(KINDS) - set(FAMILIES))}")
    written = []
    index = ["# The zoo", "", "Every model below is registered with `@pprogen.register_model`; these pages are "
             "generated from the registry's cards at every documentation build (`pprogen list` and "
             "`pprogen info NAME` print the same cards).", "", "| family | models | what they are |",
             "| --- | --- | --- |"]
    toctree = []
    for kind, (title, blurb) in FAMILIES.items():
        members = [c for c in cards if c.kind == kind]
        stub = (docs / "zoo" / f"{kind}.md").is_file()
        if not members:
            if stub:  # a family with a page and no model (yet): the page says so
                toctree.append(kind)
                written.append(_write(docs / GENERATED / "zoo" / f"{kind}.md",
                                      f"# {title}\n\n{blurb}\n\nNo model of this kind is registered.\n"))
            continue
        if not stub:
            raise ValueError(f"the zoo has models of kind {kind!r} but no page docs/zoo/{kind}.md; add one that "
                             f"includes ../_generated/zoo/{kind}.md, as docs/zoo/latent.md does")
        index += [f"| [{title}]({kind}.md) | {', '.join(f'`{c.name}`' for c in members)} | {_cell(blurb)} |"]
        toctree.append(kind)
        page = [f"# {title}", "", blurb, "", "| model | trains on | reference |", "| --- | --- | --- |"]
        page += [f"| [`{c.name}`](#zoo-{c.name}) | {_cell(c.trains_on)} | {_cell(c.reference or '-')} |"
                 for c in members]
        page += [""]
        for c in members:
            page += _model_section(c.name, c, entries, docs / "figures")
        written.append(_write(docs / GENERATED / "zoo" / f"{kind}.md", "\n".join(page).rstrip() + "\n"))
    index += ["", "```{toctree}", ":hidden:", "", *toctree, "```", ""]
    written.append(_write(docs / GENERATED / "zoo" / "index.md", "\n".join(index)))
    return written


def leaderboard_page(docs: Path) -> Path:
    """``_generated/leaderboard.md``: ``leaderboard/leaderboard.md`` and each entry's provenance."""
    root = docs.parent
    table = (root / "leaderboard" / "leaderboard.md").read_text().strip()
    entries = leaderboard_entries(root)
    lines = [
        "# Leaderboard: binarized MNIST", "",
        "Each row is a trained run shipped as a small folder in `leaderboard/` (config, float16 or int8 "
        "safetensors weights under 2 MiB, `summary.json`). The table is `leaderboard/leaderboard.md`, written by "
        "`python benchmarks/likelihood_leaderboard.py --root RUNS --report --ship leaderboard --refine 200` from "
        "those folders alone (each folder scored again after shipping); this page is generated from it and from "
        "each folder's `summary.json` at every documentation build.", "",
        "Figures are validation-split NLLs in nats on the static binarization of Larochelle & Murray (they run "
        "about 0.8 nats above the test split the literature reports); the target is the literature's test figure "
        "plus 1.5 nats. Latent-variable entries are importance sampled with K = 5000 (the guide as proposal, and "
        "again with the guide refined per image by 200 steps: both are stochastic lower bounds on log p(x)); "
        "the others are exact. `early_stopping` means 20 epochs without a better validation NLL; the weights are "
        "the best epoch's.", "", table, "",
        "## Provenance", "",
        "Trained on this project's 2-core CPU machine, one thread per run with two or three runs sharing it, "
        "except the rows on `cuda`: one NVIDIA H200 that ten training runs shared at once.", "",
        "| entry | model | device | training time | stopped | weights | shipped (commit date) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        board = e["board"]
        date = _git_date(root, e["folder"]) or "-"
        lines += [f"| `{e['entry']}` | `{board['spec']['model']}` | {board.get('device', '-')} | "
                  f"{board.get('train_seconds', 0) / 3600:.2f} h | {_cell(board.get('stop_reason', '-'))} | "
                  f"{board.get('dtype', '-')}, {board.get('weights_bytes', 0) / 2**20:.2f} MiB | {date} |"]
    lines += [
        "", "Score a row again, and draw from it (a shipped folder samples without its data; `DIR` holds "
        "binarized MNIST, see [data sets](../guides/data.md)):", "",
        "```bash", "pprogen evaluate leaderboard/nade --split valid --data-dir DIR",
        "pprogen evaluate leaderboard/vae --split valid --num-samples 5000 --refine 200 --data-dir DIR",
        "pprogen sample leaderboard/vae -n 64 --out vae.png", "```", "",
        "`tests/test_shipped_leaderboard.py` measures every exact entry again when the data can be found.", "",
        "## Samples of the shipped models", "",
    ]
    for e in entries:
        picture = docs / "figures" / f"leaderboard_{e['entry']}.png"
        if picture.is_file():
            lines += [f"![samples of the shipped {e['entry']}](../figures/{picture.name})", ""]
    return _write(docs / GENERATED / "leaderboard.md", "\n".join(lines))


def figures_page(docs: Path) -> Path:
    """``_generated/figures.md``: every picture of ``docs/figures`` with its record in ``results/figures.toml``."""
    records = tomllib.loads((docs / "results" / "figures.toml").read_text())
    pictures = sorted(p.name for p in (docs / "figures").glob("*.png"))
    missing = sorted(set(pictures) - set(records))
    stale = sorted(set(records) - set(pictures))
    if missing or stale:
        raise ValueError(f"docs/results/figures.toml: no record of {missing}; records of absent pictures {stale}")
    lines = ["# Figures", "", "Every picture in `docs/figures/`, with the command that drew it, when and on what "
             "machine (`docs/results/figures.toml`; the documentation build fails on a picture without a record). "
             "The tables behind them are in [measurements](measurements.md).", ""]
    for name in pictures:
        r = records[name]
        lines += [f"## {_markdown_text(r['title'])}", "", f"![{_markdown_text(r['title'])}](../figures/{name})", "",
                  _markdown_text(r["caption"]), "", f"- command: `{r['command']}`",
                  f"- date: {r['date']}; machine: {_markdown_text(r['machine'])}", ""]
    return _write(docs / GENERATED / "figures.md", "\n".join(lines))


# -- measurements: the result files the benchmarks write -----------------------------------------------------------

MEASUREMENT_TOPICS = [  # (part, topic, benchmark scripts): the measurements page's order; the topics keep the anchors
    # the guides link to (measurements.md#speed, #gans, ...); a script named nowhere goes under "Other benchmarks"
    ("Speed", "A training step against a hand-written one", ["bench_step_overhead", "bench_svi_step",
                                                             "bench_vae_epoch"]),
    ("Speed", "Autoregressive steps", ["bench_ar_step", "bench_pixelcnn_sampling"]),
    ("Speed", "Evidence", ["bench_log_marginal", "bench_marginal_memory", "bench_ais"]),
    ("Speed", "Flows", ["bench_flows"]),
    ("Speed", "bf16 and torch.compile", ["bench_accel"]),
    ("Speed", "Where a step's time goes", ["profile_step"]),
    ("Quality", "The VAE against a hand-written VAE", ["bench_vae_quality"]),
    ("Quality", "Flows on 2-D data", ["bench_flows_2d"]),
    ("Quality", "Evidence: IS, AIS and BDMC on binarized MNIST", ["ais_mnist"]),
    ("Quality", "GANs", ["bench_gan_modes", "bench_sample_quality"]),
    ("Quality", "Disentanglement: beta-VAE on sprites", ["bench_disentanglement"]),
    ("Quality", "Imputation", ["bench_imputation"]),
    ("Quality", "Autoencoders", ["bench_autoencoder"]),
    ("Quality", "Pyro programs in Pyro's idioms", ["report_pyro_idioms"]),
    ("The leaderboard", "How the leaderboard's configurations were found", ["likelihood_leaderboard"]),
]
NOT_BENCHMARKS = {"common"}  # benchmarks/*.py that hold shared code, not a benchmark
HISTORY = re.compile(r"^History\n-{3,}\n", re.M)  # a docstring's section of dated notes of earlier runs


def benchmark_scripts(root: Path) -> list[Path]:
    """Every benchmark script: ``benchmarks/*.py`` less the shared code."""
    return [p for p in sorted((root / "benchmarks").glob("*.py")) if p.stem not in NOT_BENCHMARKS]


def script_docstring(path: Path) -> str:
    """A script's module docstring, read without importing it."""
    return ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""


def script_title(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", first, maxsplit=1)[0].rstrip(".:")


def script_history(doc: str) -> str:
    """The docstring's ``History`` section (Markdown), or ``""``."""
    parts = HISTORY.split(doc, maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""


def script_command(name: str, doc: str) -> str:
    """How the docstring says to run the script (its first ``python benchmarks/NAME.py ...``), on one line."""
    literal = re.search(rf"``(python benchmarks/{re.escape(name)}\.py.*?)``", doc, re.S)
    line = re.search(rf"^\s*(python benchmarks/{re.escape(name)}\.py[^\n]*?)(\s+#.*)?$", doc, re.M)
    found = literal or line
    return " ".join(found.group(1).split()) if found else f"python benchmarks/{name}.py"


RESULT_KEYS = {"script", "command", "date", "machine", "git", "arguments", "tables", "notes"}


def benchmark_results(root: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """The result files of ``benchmarks/results``, by script name; a file whose script does not exist, that names
    another script than its file name does, or that lacks a field fails (so does the documentation build)."""
    scripts = {p.stem for p in benchmark_scripts(root)}
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted((root / "benchmarks" / "results").glob("*.json")):
        where = f"benchmarks/results/{path.name}"
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not JSON ({err}); run its benchmark again or remove it") from None
        missing = RESULT_KEYS - set(data) if isinstance(data, dict) else RESULT_KEYS
        if missing:
            raise ValueError(f"{where} lacks {sorted(missing)}; it was not written by benchmarks/common.py's record()")
        name = Path(data["script"]).stem
        if name not in scripts:
            raise ValueError(f"{where} comes from {data['script']}, which does not exist; remove the file or restore "
                             "the script")
        if path.stem != name and not path.stem.startswith(name + "-"):
            raise ValueError(f"{where} holds a result of {data['script']}: name it {name}[-VARIANT].json")
        found.setdefault(name, []).append((path, data))
    return found


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _cell(value)


def markdown_table(result_table: dict[str, Any]) -> str:
    """A result file's table as a Markdown table (cells escaped; numbers as they are, floats to 6 digits)."""
    columns = result_table["columns"]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in result_table["rows"]]
    return "\n".join(lines)


def _machine_text(machine: dict[str, Any]) -> str:
    threads = machine.get("torch_threads")
    parts = [machine.get("cpu") or "CPU unknown", f"{machine.get('logical_cores', '?')} logical cores",
             f"{threads} torch thread{'s' if threads != 1 else ''}", f"device {machine.get('device', '?')}",
             machine.get("platform", "?"),
             f"torch {machine.get('torch', '?')}, pyro {machine.get('pyro', '?')}, Python {machine.get('python', '?')}"]
    return _markdown_text("; ".join(parts))


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def result_section(path: Path, data: dict[str, Any]) -> list[str]:
    """One result file: where it is, its command, date, machine and commit, then its tables and notes."""
    git = data.get("git")
    if git:
        commit = f"`{git['commit'][:10]}`" + (" with changes to `pprogen/` or `benchmarks/` not yet committed"
                                             if git.get("uncommitted_changes") else "")
    else:
        commit = "unknown (not run in a git checkout)"
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(data["arguments"].items()))
    lines = [f"Recorded in `benchmarks/results/{path.name}`:", "",
             f"- command: {_code(data['command'])}",
             f"- date: {_markdown_text(data['date'])}; commit: {commit}",
             f"- machine: {_machine_text(data['machine'])}"]
    if settings:
        lines += [f"- settings (defaults included): {_code(settings)}"]
    lines += [""]
    for result_table in data["tables"]:
        lines += [f"**{_markdown_text(result_table['title'])}**", "", markdown_table(result_table), ""]
    if data["notes"]:
        lines += [f"- {_markdown_text(note)}" for note in data["notes"]] + [""]
    return lines


def _script_section(script: Path, results: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    doc = script_docstring(script)
    lines = [f"#### `{script.name}`", "", f"*{_markdown_text(_from_rst(script_title(doc)))}.*", ""]
    if not results:
        lines += [f"Not yet recorded: no file in `benchmarks/results/` comes from this script. Run "
                  f"{_code(script_command(script.stem, doc))} to record one.", ""]
    for path, data in results:
        lines += result_section(path, data)
    history = script_history(doc)
    if history:
        lines += ["##### History", "", "Dated notes of earlier runs, from the script's docstring:", "",
                  _from_rst(history), ""]
    return lines


def measurements_page(docs: Path, topics: list[tuple[str, str, list[str]]] | None = None) -> Path:
    """``_generated/measurements.md``: every benchmark script under its topic (``topics``, by default
    :data:`MEASUREMENT_TOPICS`), with its result files (``benchmarks/results/*.json``, written by the scripts
    themselves) and its docstring's History. The benchmarks are those beside ``docs`` or, where it has none (a copy
    of the docs alone), those of the checkout this extension belongs to."""
    root = docs.parent if (docs.parent / "benchmarks").is_dir() else Path(__file__).resolve().parents[2]
    scripts = {p.stem: p for p in benchmark_scripts(root)}
    results = benchmark_results(root)
    topics = [*(MEASUREMENT_TOPICS if topics is None else topics)]
    named = [s for _, _, members in topics for s in members]
    absent = sorted(set(named) - set(scripts))
    if absent:
        raise ValueError(f"docs/_ext/pprogen_docs.py: MEASUREMENT_TOPICS names {absent}, not in benchmarks/")
    others = sorted(set(scripts) - set(named))
    if others:
        topics.append(("Other", "Other benchmarks", others))
    lines, part = [], None
    for heading, topic, members in topics:
        if heading != part:
            lines += [f"## {heading}", ""]
            part = heading
        lines += [f"### {topic}", ""]
        for name in members:
            lines += _script_section(scripts[name], results.get(name, []))
    return _write(docs / GENERATED / "measurements.md", "\n".join(lines).rstrip() + "\n")


def options_table(docs: Path) -> Path:
    """``_generated/options.md``: the ``pprogen train`` options, from :data:`pprogen.engine.options.OPTIONS`."""
    from pprogen.engine.options import OPTIONS

    lines = ["| flag | trainers: default | `--override` on resume | what it sets |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        if option.type is None:
            continue
        defaults = ", ".join(f"{t}: `{v!r}`" for t, v in option.defaults.items())
        override = ", ".join(option.overridable) or "-"
        lines += [f"| `{option.flag}` | {_cell(defaults)} | {override} | {_cell(option.help)} |"]
    return _write(docs / GENERATED / "options.md", "\n".join(lines) + "\n")


def _from_rst(text: str) -> str:
    """Docstring text as Markdown: ``literal`` and :role:`target` become code spans."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def datasets_table(docs: Path) -> Path:
    """``_generated/datasets.md``: every registered data set, from its card (``pprogen.data.dataset_info``)."""
    from pprogen.data import dataset_info, list_datasets

    lines = ["| name | kind | one example | binary | source | what it is |", "| --- | --- | --- | --- | --- | --- |"]
    for name in list_datasets():
        card = dataset_info(name)
        shape = "x".join(map(str, card.shape)) if card.shape else "-"
        source = "built here, offline" if card.offline else "`--data-dir` / `PPROGEN_DATA`, or a download"
        binary = "-" if card.binary is None else ("yes" if card.binary else "no")
        lines += [f"| `{name}` | {card.kind or '-'} | {shape} | {binary} | {source} | "
                  f"{_cell(_from_rst(' '.join(card.description.split())))} |"]
    return _write(docs / GENERATED / "datasets.md", "\n".join(lines) + "\n")


def generate(docs: Path) -> list[Path]:
    """Write every generated page under ``docs/_generated``; returns their paths."""
    docs = Path(docs)
    return [*zoo_pages(docs), leaderboard_page(docs), figures_page(docs), measurements_page(docs), options_table(docs),
            datasets_table(docs)]


def setup(app):  # pragma: no cover - run by Sphinx
    app.connect("builder-inited", lambda app: generate(Path(app.srcdir)))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
