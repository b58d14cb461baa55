"""The shipped leaderboard (``leaderboard/``): every folder is small, loads against its config (rebuilt buffers
checked by digest), and its table is computed from exactly these files; with binarized MNIST beside the project
(``../shared/data``, or ``$PPROGEN_DATA``) every exact entry's validation NLL is measured again from its weights
(on the first validation images, against the figure recorded at shipping, for entries shipped with a spot check)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from pprogen.engine import load_run

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "leaderboard").glob("*") if (p / "config.json").is_file())
sys.path.insert(0, str(ROOT / "benchmarks"))
import likelihood_leaderboard as lb  # noqa: E402


def data_dir():
    for folder in (os.environ.get("PPROGEN_DATA"), ROOT.parent / "shared" / "data"):
        if folder and (Path(folder) / "binarized_mnist.npz").is_file():
            return str(folder)
    return None


def test_the_shipped_table_is_computed_from_the_shipped_folders():
    assert SHIPPED, "leaderboard/ ships no entry"
    assert lb.shipped_table(ROOT / "leaderboard") == (ROOT / "leaderboard" / "leaderboard.md").read_text()
    assert {p.name for p in SHIPPED} <= set(lb.ENTRIES)


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_entry_is_small_loads_without_data_and_scores_as_its_table_row(folder):
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert weights <= 2 * 2**20
    summary = json.loads((folder / "summary.json").read_text())
    record = summary["leaderboard"]
    assert record["best"]["nll"] == summary["valid_evaluation"]["nll"]
    _, config, _, model, _, _ = load_run(str(folder), torch.device("cpu"), need_data=False)
    assert config["model"] == record["spec"]["model"]
    assert model.sample(2).shape == (2, *config["shipped"]["data"]["shape"])
    if record["best"]["method"] != "exact":
        return  # importance-sampled entries: `pprogen evaluate FOLDER --num-samples 5000` (minutes), not here
    where = data_dir()
    if where is None:
        pytest.skip("binarized MNIST is not beside the project (../shared/data) nor in $PPROGEN_DATA")
    _, _, dataset, model, _, _ = load_run(str(folder), torch.device("cpu"), data_dir=where)
    spot = record.get("spot_check")  # the first images, where all 10 000 would take minutes (measured at shipping)
    rows, want = (dataset.valid[:spot["rows"]], spot["nll"]) if spot else (dataset.valid, record["best"]["nll"])
    with torch.no_grad():
        nll = -torch.cat([model.log_prob(x) for x in rows.split(2000)]).mean().item()
    assert nll == pytest.approx(want, abs=1e-3)
