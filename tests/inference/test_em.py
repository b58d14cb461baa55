"""fit_em: closed-form EM on the shared epoch loop, against the model's own EM step called by hand (exactly),
monotone log-likelihood, exact resume from a checkpoint, convergence, the non-finite guard and the refusals."""

import copy

import pytest
import torch

import pprogen
from pprogen.inference import NonFiniteLossError, fit_em
from pprogen.runs import Run, RunError


def blobs(n=300, seed=0):
    """Three well-separated 2-D Gaussian clusters of unequal spread."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 1.0], [0.0, -4.0]])
    spread = torch.tensor([0.4, 0.8, 1.2])
    c = torch.arange(n) % 3
    return centres[c] + spread[c, None] * torch.randn(n, 2, generator=g)


def started_gmm(x, num_components=4, seed=1):
    torch.manual_seed(seed)
    return pprogen.create_model("gmm", x_dim=2, num_components=num_components).init_from_data(x)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_each_epoch_is_one_em_step_of_the_model_exactly():
    x = blobs()
    model = started_gmm(x)
    by_hand = copy.deepcopy(model)
    history = fit_em(model, x, x[:60], epochs=12, tol=0.0)
    assert history.stop_reason == "finished" and [r["epoch"] for r in history.records] == list(range(1, 13))
    for record in history.records:
        by_hand.fit_em(x, 1)
        assert record["train_loss"] == -by_hand.log_prob(x).double().mean().item()
        assert record["valid_loss"] == -by_hand.log_prob(x[:60]).double().mean().item()
    assert_same_weights(weights(model), weights(by_hand))
    best = min(history.valid_loss)
    assert history.best_valid_loss == best and history.records[history.best_epoch - 1]["valid_loss"] == best


def test_the_log_likelihood_never_decreases():
    x = blobs()
    history = fit_em(started_gmm(x, num_components=5), x, epochs=60)
    nll = history.train_loss
    assert len(nll) > 5 and nll[-1] < nll[0] - 0.1
    assert all(later <= earlier + 1e-6 * abs(earlier) for earlier, later in zip(nll, nll[1:]))


def test_it_stops_once_an_iteration_gains_less_than_tol():
    x = blobs()
    history = fit_em(started_gmm(x), x, epochs=500, tol=1e-4)
    nll = history.train_loss
    assert history.stop_reason == "converged" and len(nll) < 500
    assert nll[-2] - nll[-1] < 1e-4 * abs(nll[-1])
    assert all(a - b >= 1e-4 * abs(b) for a, b in zip(nll[:-2], nll[1:-1]))  # no earlier epoch had converged


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_weights(tmp_path):
    x, valid = blobs(), blobs(60, seed=5)
    settings = dict(epochs=17, tol=0.0, checkpoint_every=5)
    straight_model = started_gmm(x)
    straight = fit_em(straight_model, x, valid, run=Run.create({"model": "gmm", "data": "x"}, tmp_path / "a"),
                      **settings)

    model = started_gmm(x)
    iterate, calls = model.fit_em, []

    def killed_during_epoch_8(data, num_iters):
        calls.append(num_iters)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return iterate(data, num_iters)

    model.fit_em = killed_during_epoch_8
    run = Run.create({"model": "gmm", "data": "x"}, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        fit_em(model, x, valid, run=run, **settings)
    saved = run.load_checkpoint()
    assert saved["epoch"] == 5 and set(saved) == {"epoch", "em_model", "history", "rng"}
    assert len(run.read_metrics()) == 5

    fresh = started_gmm(x, seed=99)  # other starting weights: all of them must come from the checkpoint
    resumed = fit_em(fresh, x, valid, run=Run.open(tmp_path / "b"), resume=True, **settings)
    assert_same_weights(weights(straight_model), weights(fresh))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.records] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in straight.records]
    assert (resumed.best_epoch, resumed.best_valid_loss) == (straight.best_epoch, straight.best_valid_loss)
    assert run.load_checkpoint()["epoch"] == 17 and len(run.read_metrics()) == 17
    loaded = started_gmm(x, seed=7)
    run.load_weights("model", loaded)
    assert_same_weights(weights(straight_model), weights(loaded))


def test_resuming_from_a_checkpoint_already_read_continues_for_more_epochs(tmp_path):
    x = blobs()
    straight_model = started_gmm(x)
    fit_em(straight_model, x, epochs=9, tol=0.0)
    run = Run.create({"model": "gmm", "data": "x"}, tmp_path / "r")
    fit_em(started_gmm(x), x, epochs=4, tol=0.0, run=run)
    model = started_gmm(x, seed=3)
    history = fit_em(model, x, epochs=9, tol=0.0, run=run, resume=run.load_checkpoint())
    assert [r["epoch"] for r in history.records] == list(range(1, 10))
    assert_same_weights(weights(straight_model), weights(model))


def test_a_non_finite_log_likelihood_stops_after_the_state_is_written(tmp_path):
    x = blobs()
    x[7, 1] = float("inf")
    run = Run.create({"model": "gmm", "data": "x"}, tmp_path / "r")
    with pytest.raises(NonFiniteLossError, match="EM iteration 1 gave a non-finite log-likelihood; check the data") as err:
        fit_em(started_gmm(blobs()), x, epochs=5, run=run)
    assert err.value.history.stop_reason == "non_finite" and len(err.value.history.records) == 1
    saved = run.load_checkpoint()
    assert saved["epoch"] == 1 and saved["history"]["stop_reason"] == "non_finite"
    assert len(run.read_metrics()) == 1 and (run.path / "model.safetensors").is_file()


def test_a_checkpoint_of_another_trainer_is_refused(tmp_path):
    run = Run.create({"model": "gmm", "data": "x"}, tmp_path / "svi")
    run.save_checkpoint({"epoch": 1, "params": {}})
    with pytest.raises(RunError, match=r"svi was not trained by EM; resume it without --trainer"):
        fit_em(started_gmm(blobs()), blobs(), epochs=3, run=run, resume=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs .EM iterations. must be a positive integer"),
    (dict(epochs=3, checkpoint_every=0), "checkpoint_every must be a positive integer"),
    (dict(epochs=3, tol=-1.0), "tol must be a number >= 0"),
])
def test_nonsensical_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_em(started_gmm(blobs()), blobs(), **kwargs)


def test_a_model_without_closed_form_em_is_refused():
    with pytest.raises(TypeError, match="has no closed-form EM"):
        fit_em(torch.nn.Linear(2, 2), blobs(), epochs=2)
