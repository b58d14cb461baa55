"""Documentation pages generated from the project's own files, written at the start of every Sphinx build.

- ``zoo/KIND``: one page per model family (the registry's kinds), one section per registered model, from its card
  (``pprogen.registry.get_card``: story, reference, defaults, data, how to train it) and, where ``leaderboard/``
  ships a trained entry of that model, its measured figure from the entry's ``summary.json``;
- ``results/leaderboard.md``: ``leaderboard/leaderboard.md`` (written by ``benchmarks/likelihood_leaderboard.py``)
  with each entry's provenance from its ``summary.json`` and ``config.json``;
- ``results/figures.md``: every picture in ``docs/figures/`` with the command, date and machine recorded for it in
  ``docs/results/figures.toml`` (a picture without a record, or a record without its picture, fails the build);
- ``_generated/options.md``: the ``pprogen train`` options table, from ``pprogen.engine.options.OPTIONS``;
- ``_generated/datasets.md``: the data sets table, from the data-set registry's cards.

Everything is written under ``docs/_generated/`` (kept out of version control); the pages in the repository
(``docs/zoo/KIND.md``, ``docs/results/leaderboard.md``, ``docs/results/figures.md``) include it, so a model
registered tomorrow appears in its family's page with no edit to the docs (a new family needs its two-line page,
and the build says so). :func:`generate` needs no Sphinx (the tests call it); :func:`setup` connects it to the
build.
"""

from __future__ import annotations

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
    return [*zoo_pages(docs), leaderboard_page(docs), figures_page(docs), options_table(docs), datasets_table(docs)]


def setup(app):  # pragma: no cover - run by Sphinx
    app.connect("builder-inited", lambda app: generate(Path(app.srcdir)))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
