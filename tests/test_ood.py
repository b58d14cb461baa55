"""Out-of-distribution scores and scoring other data: ``pprogen.inference.ood`` and ``pprogen evaluate --data / --ood``.

The rank statistics are checked against brute-force counts over all pairs; the CLI's figures against the model's
own ``log_prob`` of the same rows, recomputed here."""

import itertools
import json

import numpy as np
import pytest
import torch

from pprogen.cli import main
from pprogen.data import load_dataset
from pprogen.engine import load_run
from pprogen.inference.ood import auroc, batch_means, fpr_at_tpr, ood_report


def brute_auroc(a, b):
    pairs = list(itertools.product(a.tolist(), b.tolist()))
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)


def brute_fpr(a, b, tpr=0.95):
    """The highest threshold accepting (score >= t) at least tpr of ``a``, tried over every value."""
    best = max(t for t in a.tolist() if (a >= t).double().mean() >= tpr)
    return float((b >= best).double().mean())


def test_auroc_and_fpr_equal_brute_force_counts_with_ties():
    g = torch.Generator().manual_seed(0)
    for n, m in ((7, 5), (40, 33), (100, 1)):
        a = torch.randint(0, 12, (n,), generator=g).double()  # ties within and across the sets
        b = torch.randint(-3, 9, (m,), generator=g).double()
        assert auroc(a, b) == pytest.approx(brute_auroc(a, b), abs=1e-12)
        for tpr in (0.95, 0.5, 1.0):
            assert fpr_at_tpr(a, b, tpr) == pytest.approx(brute_fpr(a, b, tpr), abs=1e-12)


def test_known_values():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    a = torch.arange(100.0)  # 95 of 100 accepted from 5.0 on: out values 5..9 of 0..9 pass
    assert fpr_at_tpr(a, torch.arange(10.0)) == 0.5


def test_typicality_scores_distance_of_batch_means_from_the_entropy():
    ref = torch.tensor([-10.0, -12.0])  # entropy 11
    report = ood_report(torch.tensor([-11.0, -11.0, -13.0, -9.0]), torch.tensor([-1.0, -2.0, -30.0, -40.0]), ref,
                        batch=2)
    assert report.entropy == 11.0
    a, b = report.scores("typicality")
    assert a.tolist() == [0.0, 0.0] and b.tolist() == [-9.5, -24.0]
    assert batch_means(torch.arange(5.0), 2).tolist() == [0.5, 2.5]
    s = report.summary()
    assert s["typicality"]["auroc"] == 1.0 and s["out_more_likely"] is False


@pytest.mark.parametrize("bad, message", [
    (dict(log_prob_in=torch.tensor([]),), "log_prob_in is empty"),
    (dict(log_prob_out=torch.tensor([0.0, -float("inf")]),), "non-finite"),
    (dict(batch=5), "make no batch of 5"),
    (dict(batch=0), "at least 1"),
])
def test_bad_reports_are_refused(bad, message):
    args = dict(log_prob_in=torch.zeros(3), log_prob_out=torch.zeros(3), log_prob_reference=torch.zeros(3), batch=1)
    with pytest.raises(ValueError, match=message):
        ood_report(**{**args, **bad})


@pytest.fixture(scope="module")
def fvsbn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "fvsbn"
    assert main(["train", "fvsbn", "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    return out


def _thinned(tmp_path):
    """A 'simpler' set shaped like digits_binary: the test digits with their strokes eroded (mostly blank)."""
    from pprogen.data import erode

    x = load_dataset("digits_binary").test
    path = tmp_path / "thin.npz"
    np.savez(path, train=x[:100].numpy(), test=erode(x).numpy())
    return path


def test_evaluate_ood_matches_the_models_own_log_prob(fvsbn_run, tmp_path, capsys):
    path = _thinned(tmp_path)
    assert main(["evaluate", str(fvsbn_run), "--ood", str(path), "--ood-batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "typicality" in out
    result = json.loads((fvsbn_run / "summary.json").read_text())["ood"]["digits_binary/test vs thin/test"]
    _, _, dataset, model, _, _ = load_run(str(fvsbn_run), torch.device("cpu"))
    other = load_dataset(str(path)).flat()
    with torch.no_grad():
        lp_in, lp_out, lp_ref = (model.log_prob(t) for t in (dataset.test, other.test, dataset.valid))
    assert result["reference"] == "digits_binary/valid" and result["num_out"] == other.test.shape[0]
    assert result["nll_in"] == pytest.approx(-lp_in.double().mean().item(), abs=1e-4)
    assert result["entropy"] == pytest.approx(-lp_ref.double().mean().item(), abs=1e-4)
    assert result["likelihood"]["auroc"] == pytest.approx(brute_auroc(lp_in, lp_out), abs=1e-6)
    h = -lp_ref.double().mean()
    typ = [-(-batch_means(lp, 3) - h).abs() for lp in (lp_in, lp_out)]
    assert result["typicality"]["auroc"] == pytest.approx(brute_auroc(*typ), abs=1e-6)
    assert result["typicality"]["fpr_at_95_tpr"] == pytest.approx(brute_fpr(*typ), abs=1e-6)
    assert (fvsbn_run / result["picture"]).stat().st_size > 0


def test_evaluate_other_data_scores_its_split(fvsbn_run, tmp_path, capsys):
    x = load_dataset("digits_binary").test
    path = tmp_path / "mine.npz"
    np.savez(path, train=x[:50].numpy(), test=x[50:].numpy())
    assert main(["evaluate", str(fvsbn_run), "--data", str(path)]) == 0
    assert capsys.readouterr().out.startswith("mine: test NLL:")
    result = json.loads((fvsbn_run / "summary.json").read_text())["evaluations"]["mine/test"]
    _, _, _, model, _, _ = load_run(str(fvsbn_run), torch.device("cpu"))
    with torch.no_grad():
        expected = -model.log_prob(x[50:].reshape(-1, 64)).double().mean().item()
    assert result["num_data"] == x.shape[0] - 50 and result["nll"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--ood", "digits"], "is not binary; binarize it first"),
    (["--ood", "digits28_binary"], "examples of shape (784,), but fvsbn was trained on 'digits_binary' with examples "
                                   "of shape (64,)"),
    (["--data", "moons"], "examples of shape (2,)"),
    (["--ood-batch", "4"], "--ood-batch sets the typicality test of --ood"),
    (["--ood", "digits_binary", "--method", "ais"], "--data and --ood score log p(x) by --method auto or is"),
    (["--ood", "nosuchset"], "unknown data set"),
    (["--ood", "digits_binary", "--ood-batch", "500"], "make no batch of 500"),
])
def test_bad_other_data_is_one_line_and_writes_nothing(fvsbn_run, argv, message, capsys):
    before = {p.name: p.read_bytes() for p in fvsbn_run.iterdir() if p.is_file()}
    assert main(["evaluate", str(fvsbn_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in fvsbn_run.iterdir() if p.is_file()} == before


def test_a_vae_is_scored_by_importance_sampling_against_other_data(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train", "vae", "--out", str(out), "--epochs", "2", "--no-progress", "--set", "hidden_dims=[32]",
                 "--set", "z_dim=4", "--limit", "200"]) == 0
    assert main(["evaluate", str(out), "--ood", str(_thinned(tmp_path)), "--num-samples", "20", "--limit", "40"]) == 0
    result = json.loads((out / "summary.json").read_text())["ood"]["digits_binary/test vs thin/test"]
    assert result["num_samples"] == 20 and result["num_in"] == 40 and "importance sampling" in result["method"]


def test_a_gan_has_no_likelihood_for_other_data(tmp_path, capsys):
    out = tmp_path / "gan"
    assert main(["train", "gan", "--out", str(out), "--epochs", "1", "--no-progress", "--limit", "200"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--ood", "moons"]) == 2
    assert "is a GAN: it has no likelihood" in capsys.readouterr().err


def test_detect_ood_from_python_on_a_plain_pyro_program():
    """A user's program (a Beta-Bernoulli pixel model with a per-datum latent and a plain-function guide):
    importance sampling with an exact guide gives log p(x) exactly, so the report equals brute-force ranks of it."""
    import pyro
    import pyro.distributions as dist

    from pprogen.inference import detect_ood

    def model(x):
        with pyro.plate("data", x.shape[0]):
            p = pyro.sample("p", dist.Beta(2.0, 5.0))
            pyro.sample("x", dist.Binomial(10, p), obs=x)

    def guide(x):  # the exact posterior Beta(2 + x, 5 + 10 - x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("p", dist.Beta(2.0 + x, 15.0 - x))

    g = torch.Generator().manual_seed(1)
    data_in, data_out, ref = (torch.randint(0, k, (n,), generator=g).float() for k, n in ((4, 30), (11, 20), (4, 25)))
    report = detect_ood(model, guide, data_in, data_out, ref, num_samples=3)

    def exact(x):  # beta-binomial evidence
        from torch.special import gammaln

        def lbeta(a, b):
            return gammaln(a) + gammaln(b) - gammaln(a + b)

        return (gammaln(torch.tensor(11.0)) - gammaln(x + 1) - gammaln(11 - x) + lbeta(2 + x, 15 - x)
                - lbeta(torch.tensor(2.0), torch.tensor(5.0)))

    for got, x in ((report.log_prob_in, data_in), (report.log_prob_out, data_out), (report.log_prob_reference, ref)):
        assert torch.allclose(got, exact(x).double(), atol=1e-4)
    # equal counts tie exactly in the evidence, but not in float estimates: rank the estimates themselves
    assert report.summary()["likelihood"]["auroc"] == pytest.approx(
        brute_auroc(report.log_prob_in, report.log_prob_out), abs=1e-9)


def test_a_dequantizing_flow_refuses_data_off_its_grid_of_levels(tmp_path, capsys):
    out = tmp_path / "flow"
    assert main(["train", "realnvp", "--data", "digits", "--epochs", "1", "--no-progress", "--limit", "200",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--ood", "digits_binary", "--limit", "30"]) == 0  # 2 levels on its 17
    fine = np.round(np.random.default_rng(0).random((40, 1, 8, 8)) * 255) / 255  # 256 levels
    np.save(tmp_path / "fine.npy", fine.astype(np.float32))
    assert main(["evaluate", str(out), "--ood", str(tmp_path / "fine.npy")]) == 2
    assert "dequantizes pixels on 17 levels, but the pixels of 'fine' are on 256 levels" in capsys.readouterr().err
