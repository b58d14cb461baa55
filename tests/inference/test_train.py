import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import pprogen
from pprogen.inference import NonFiniteLossError, fit
from pprogen.runs import Run


class Gaussian(PyroModule):
    """x ~ N(mu, sigma^2), fully observed: SVI with an empty guide is maximum likelihood."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(0.0))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.mu, self.log_sigma.exp()), obs=x)


def empty_guide(x=None):
    pass


def data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.5 + 0.7 * torch.randn(n, generator=g)


@pytest.mark.parametrize("elbo", ["trace", "graph"])
def test_fit_reaches_the_maximum_likelihood_estimate(elbo):
    x = data()
    model = Gaussian()
    fit(model, empty_guide, x, epochs=150, batch_size=50, lr=0.05, elbo=elbo, progress=False)
    assert abs(model.mu.item() - x.mean().item()) < 0.03
    assert abs(model.log_sigma.exp().item() - x.std(unbiased=False).item()) < 0.03


@pytest.mark.parametrize("optimizer, torch_optimizer", [("adagrad", torch.optim.Adagrad), ("rmsprop", torch.optim.RMSprop),
                                                      ("sgd", torch.optim.SGD)])
def test_each_optimizer_steps_as_its_torch_optimizer_does(optimizer, torch_optimizer):
    """Three full-batch steps of fit equal three steps of the named torch optimizer on -sum log p(x)."""
    from pprogen.inference import Optim

    x = data(n=40)
    model = Gaussian()
    fit(model, empty_guide, x, epochs=3, batch_size=40, optim=Optim(optimizer, lr=0.01), progress=False,
        fast_path=False)
    mu, log_sigma = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    reference = torch_optimizer([mu, log_sigma], lr=0.01)
    for _ in range(3):
        reference.zero_grad()
        nll = -dist.Normal(mu, log_sigma.exp()).log_prob(x)
        nll.sum().backward()
        reference.step()
    assert model.mu.item() == pytest.approx(mu.item(), abs=1e-5)
    assert model.log_sigma.item() == pytest.approx(log_sigma.item(), abs=1e-5)


def averaged_sgd_iterates(x, steps, lr, decay):
    """Full-batch SGD on -sum log N(x | mu, exp(log_sigma)^2) from zeros, and after each step the moving average of
    the iterates with fit's warm-up: decay min(decay, (1 + t) / (10 + t)) at the t-th update."""
    theta = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=lr)
    average, out = torch.zeros(2), []
    for t in range(steps):
        optimizer.zero_grad()
        (-dist.Normal(theta[0], theta[1].exp()).log_prob(x)).sum().backward()
        optimizer.step()
        average = average + (1 - min(decay, (1 + t) / (10 + t))) * (theta.detach() - average)
        out.append(average)
    return out


def test_ema_scores_early_stops_on_and_leaves_the_moving_average_of_the_iterates():
    x, valid = data(n=40), data(n=30, seed=1) + 0.3
    model = Gaussian()
    history = fit(model, empty_guide, x, valid_data=valid, epochs=12, batch_size=40, optimizer="sgd", lr=0.01,
                  ema=0.8, progress=False)
    averages = averaged_sgd_iterates(x, 12, 0.01, 0.8)
    expected = [-dist.Normal(a[0], a[1].exp()).log_prob(valid).mean().item() for a in averages]
    assert [r["valid_loss"] for r in history.records] == pytest.approx(expected, abs=1e-5)
    best = min(range(12), key=expected.__getitem__)
    assert history.best_epoch == best + 1
    assert [model.mu.item(), model.log_sigma.item()] == pytest.approx(averages[best].tolist(), abs=1e-5)


def test_ema_without_validation_data_leaves_the_last_average_and_resumes_exactly(tmp_path):
    settings = dict(epochs=5, batch_size=16, lr=1e-2, progress=False, seed=3, ema=0.9)
    pyro.set_rng_seed(0)
    model, guide, x = vae_setup()
    fit(model, guide, x, run=Run.create({"model": "vae", "data": "x"}, tmp_path / "a"), **settings)
    uninterrupted = params_of(model, guide)
    pyro.set_rng_seed(0)
    model, guide, x = vae_setup()
    fit(model, guide, x, **{**settings, "ema": 0.0})
    assert not all(torch.equal(a, b) for a, b in zip(uninterrupted, params_of(model, guide)))  # not the iterates

    pyro.set_rng_seed(0)
    model, guide, x = vae_setup()
    with pytest.raises(KeyboardInterrupt):
        fit(model, guide, x, run=Run.create({"model": "vae", "data": "x"}, tmp_path / "b"),
            callback=interrupt_after(2), **settings)
    pyro.set_rng_seed(99)
    model, guide, _ = vae_setup()
    fit(model, guide, x, run=Run.open(tmp_path / "b"), resume=True, **settings)
    for a, b in zip(uninterrupted, params_of(model, guide)):
        assert torch.equal(a, b)


def test_ema_with_replayed_steps_equals_ema_running_the_program_every_step():
    """Past the replay's recording (50 steps) and its checks, with the average swapped in and out for validation."""
    results = []
    for fast_path in (True, False):
        pyro.set_rng_seed(0)
        model, guide, x = vae_setup()
        history = fit(model, guide, x[12:], valid_data=x[:12], epochs=25, batch_size=16, lr=1e-2, progress=False,
                      seed=3, ema=0.95, fast_path=fast_path)
        results.append((params_of(model, guide), [r["valid_loss"] for r in history.records], history.fast_path))
    (replayed, replayed_valid, summary), (plain, plain_valid, _) = results
    assert summary.startswith("replayed")
    assert replayed_valid == pytest.approx(plain_valid, abs=1e-5)
    for a, b in zip(replayed, plain):
        assert torch.allclose(a, b, atol=1e-6)


def test_ema_averages_a_user_written_map_program_with_a_per_datum_table():
    """A function guide of pyro.param sites: a global latent and a per-datum table in a plate named "obs" (MAP, so
    every step is deterministic); the weights left are the moving average of hand-written SGD iterates."""
    x = data(n=30)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Delta(pyro.param("m", torch.tensor(0.0))))
        with pyro.plate("obs", len(x)):
            pyro.sample("z", dist.Delta(pyro.param("table", torch.zeros(len(x)))))

    pyro.clear_param_store()
    fit(model, guide, x, epochs=15, batch_size=30, optimizer="sgd", lr=0.01, ema=0.8, progress=False)
    m, table = torch.zeros((), requires_grad=True), torch.zeros(30, requires_grad=True)
    optimizer = torch.optim.SGD([m, table], lr=0.01)
    average = [torch.zeros(()), torch.zeros(30)]
    for t in range(15):
        optimizer.zero_grad()
        log_joint = dist.Normal(0.0, 10.0).log_prob(m) + dist.Normal(m, 1.0).log_prob(table).sum() \
            + dist.Normal(table, 0.5).log_prob(x).sum()
        (-log_joint).backward()
        optimizer.step()
        weight = 1 - min(0.8, (1 + t) / (10 + t))
        average = [a + weight * (p.detach() - a) for a, p in zip(average, (m, table))]
    assert pyro.param("m").item() == pytest.approx(average[0].item(), abs=1e-5)
    assert torch.allclose(pyro.param("table").detach(), average[1], atol=1e-5)
    assert not torch.allclose(pyro.param("table").detach(), table.detach(), atol=1e-3)  # the average, not the iterate


@pytest.mark.parametrize("ema", [1.0, -0.1, "0.9"])
def test_ema_outside_zero_one_is_refused(ema):
    with pytest.raises(ValueError, match=r"ema is the decay .* in \[0, 1\)"):
        fit(Gaussian(), empty_guide, data(n=10), epochs=1, ema=ema, progress=False)


def test_fit_trains_pyro_param_in_a_user_written_program():
    x = data()

    def model(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 0.7), obs=x)

    fit(model, empty_guide, x, epochs=100, batch_size=100, lr=0.05, progress=False)
    assert abs(pyro.param("mu").item() - x.mean().item()) < 0.02


def vae_setup():
    model = pprogen.create_model("vae", x_dim=6, z_dim=2, hidden_dims=(8,))
    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    return model, model.default_guide(), x


def params_of(model, guide):
    return [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]


def interrupt_after(last: int):
    """A fit callback that stops training like Ctrl-C once epoch ``last`` is saved."""
    def interrupt(epoch, record):
        if epoch == last:
            raise KeyboardInterrupt

    return interrupt


def test_resumed_run_ends_with_exactly_the_uninterrupted_parameters(tmp_path):
    settings = dict(valid_data=None, epochs=5, batch_size=16, lr=1e-2, progress=False, seed=3)
    pyro.set_rng_seed(0)
    model, guide, x = vae_setup()
    fit(model, guide, x, run=Run.create({"model": "vae", "data": "x"}, tmp_path / "a"), **settings)
    uninterrupted = params_of(model, guide)

    pyro.set_rng_seed(0)
    model, guide, x = vae_setup()
    run = Run.create({"model": "vae", "data": "x"}, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        fit(model, guide, x, run=run, callback=interrupt_after(2), **settings)
    pyro.set_rng_seed(99)  # a fresh process: different initial weights and random state
    model, guide, _ = vae_setup()
    history = fit(model, guide, x, run=Run.open(tmp_path / "b"), resume=True, **settings)
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4, 5]
    for a, b in zip(uninterrupted, params_of(model, guide)):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_at_the_step_and_keeps_the_last_good_parameters():
    class Exploding(Gaussian):
        calls = 0

        def forward(self, x=None):
            type(self).calls += 1
            self.seen = self.mu.detach().clone()
            scale = self.log_sigma.exp() * (math.nan if type(self).calls == 6 else 1.0)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.mu, scale), obs=x)

    model = Exploding()
    x = data(40)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 3 .*site 'x'") as err:
        # calls 1-2 are the sandboxed data check (a batch, then one row fewer), call 3 the parameter
        # discovery, calls 4-6 steps 1-3 (on the general path: a replayed step does not call the program)
        fit(model, empty_guide, x, epochs=2, batch_size=10, lr=0.1, progress=False, fast_path=False)
    assert torch.equal(model.mu.detach(), model.seen)
    assert model.mu.item() != 0.0  # two good steps were taken
    assert err.value.history.stop_reason == "non_finite"


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_nan_gradient_under_a_finite_loss_stops_and_keeps_the_last_good_parameters(fast_path):
    class Cusp(Gaussian):  # sqrt(|mu|) is finite at mu = 0; its gradient there is 0 / 0
        def forward(self, x=None):
            self.seen = self.mu.detach().clone()
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.mu.abs().sqrt(), 1.0), obs=x)

    model = Cusp()
    with torch.no_grad():
        model.mu.fill_(0.0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at epoch 1, step 1 "):
        fit(model, empty_guide, data(40), epochs=1, batch_size=10, lr=0.1, progress=False, fast_path=fast_path)
    assert model.mu.item() == 0.0 and torch.equal(model.mu.detach(), model.seen)


def test_early_stopping_restores_the_best_validation_state():
    model, guide, x = vae_setup()
    per_epoch = {}

    def remember(epoch, record):
        per_epoch[epoch] = params_of(model, guide)

    history = fit(model, guide, x[20:], valid_data=x[:20], epochs=60, batch_size=8, lr=0.05,
                  patience=3, progress=False, callback=remember)
    assert history.stop_reason == "early_stopping"
    assert len(history.records) < 60
    best = min(r["valid_loss"] for r in history.records)
    assert history.best_valid_loss == best
    assert history.records[history.best_epoch - 1]["valid_loss"] == best
    assert history.best_epoch < len(history.records)
    for a, b in zip(per_epoch[history.best_epoch], params_of(model, guide)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), "learning rate must be a positive number"),
        (dict(weight_decay=-0.1), "weight_decay must be a non-negative number"),
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(num_particles=0), "num_particles must be a positive integer"),
        (dict(optimizer="adma"), "did you mean 'adam'"),
        (dict(patience=2), "early stopping .* needs validation data"),
        (dict(device="cuda:0" if not torch.cuda.is_available() else "cpu", lr=-1), "learning rate|no CUDA"),
    ],
)
def test_nonsensical_settings_raise_before_training(kwargs, message):
    model, guide, x = vae_setup()
    before = params_of(model, guide)
    with pytest.raises(ValueError, match=message):
        fit(model, guide, x, progress=False, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model, guide)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    model, guide, x = vae_setup()
    with pytest.raises(ValueError, match="no CUDA GPU is available; use --device cpu"):
        fit(model, guide, x, device="cuda", progress=False)


def test_bad_data_is_rejected_with_the_fix():
    model, guide, x = vae_setup()
    with pytest.raises(ValueError, match="outside the support of observed site 'x'"):
        fit(model, guide, x * 0.5, progress=False)
    with pytest.raises(ValueError, match=r"does not fit the model, which expects \(6,\)"):
        fit(model, guide, torch.zeros(10, 5), progress=False)
    nan = x.clone()
    nan[7, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf in 1 example.*index 7"):
        fit(model, guide, nan, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(model, guide, x[:0], progress=False)


def test_lazily_built_guide_parameters_are_trained():
    from pprogen.inference import make_guide
    from pprogen.inference.elbo import ELBOLoss, TraceELBO
    from pprogen.inference.train import collect_parameters

    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    guide = make_guide("amortized_normal", model, hidden_dims=(4,))
    assert not list(guide.parameters())
    params = collect_parameters(ELBOLoss(TraceELBO(), model, guide), model.sample(5))
    assert {id(p) for p in guide.parameters()} <= {id(p) for p in params} and list(guide.parameters())


def test_kl_warmup_ramps_beta_linearly_per_epoch():
    from pprogen.inference import TraceELBO

    model, guide, x = vae_setup()
    seen = []
    elbo = TraceELBO(beta=2.0)
    fit(model, guide, x, epochs=3, batch_size=30, elbo=elbo, beta=2.0, kl_warmup=4, progress=False,
        callback=lambda epoch, record: seen.append(elbo.beta))
    assert seen == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="kl_warmup anneals"):
        fit(model, guide, x, epochs=1, elbo=pyro.infer.Trace_ELBO(), kl_warmup=2, progress=False)


def test_resuming_an_early_stopped_run_hands_back_its_best_state(tmp_path):
    """A finished early-stopped run resumed (for more epochs, say) trains nothing and leaves the best
    validation state in the model, as the run ended; a larger patience continues it."""
    settings = dict(epochs=60, batch_size=8, lr=0.05, progress=False, seed=1)
    model, guide, x = vae_setup()
    run = Run.create({"model": "vae", "data": "x"}, tmp_path / "r")
    history = fit(model, guide, x[20:], valid_data=x[:20], patience=3, run=run, **settings)
    assert history.stop_reason == "early_stopping" and history.best_epoch < len(history.records)
    best = params_of(model, guide)
    pyro.set_rng_seed(7)
    model, guide, _ = vae_setup()  # other initial weights: all of them must come from the checkpoint
    again = fit(model, guide, x[20:], valid_data=x[:20], patience=3, run=Run.open(tmp_path / "r"), resume=True,
                **{**settings, "epochs": 100})
    assert len(again.records) == len(history.records) and again.stop_reason == "early_stopping"
    for a, b in zip(best, params_of(model, guide)):
        assert torch.equal(a, b)
    longer = fit(model, guide, x[20:], valid_data=x[:20], patience=6, run=Run.open(tmp_path / "r"), resume=True,
                 **{**settings, "epochs": 100})
    assert len(longer.records) > len(history.records)
    unlimited = fit(model, guide, x[20:], valid_data=x[:20], patience=None, run=Run.open(tmp_path / "r"),
                    resume=True, **{**settings, "epochs": len(longer.records) + 2})
    assert len(unlimited.records) == len(longer.records) + 2  # early stopping off: the run goes on


def test_validation_during_kl_warmup_is_scored_at_the_final_beta():
    """With KL warm-up the validation loss is the negative ELBO at the final beta (a bound, comparable
    across epochs), not at the epoch's smaller beta."""
    from pprogen.inference import TraceELBO

    model, guide, x = vae_setup()
    valid = (torch.rand(3000, 6, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    seen = []
    fit(model, guide, x, valid_data=valid, epochs=5, batch_size=30, elbo=TraceELBO(), kl_warmup=100,
        restore_best=False, progress=False, lr=0.05, callback=lambda epoch, record: seen.append(record["valid_loss"]))
    with torch.no_grad():
        full = TraceELBO(num_particles=20)
        bound = sum(full.loss(model, guide, valid[i:i + 500]) for i in range(0, 3000, 500)) / 3000
        kl = 0.0
        for i in range(0, 3000, 500):
            tr = pyro.poutine.trace(guide).get_trace(valid[i:i + 500])
            q = tr.nodes["z"]["fn"]
            p = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
            kl += torch.distributions.kl_divergence(q, p).sum().item()
    kl /= 3000
    assert kl > 0.5  # at beta = 5/100 the loss would read about 0.95 * kl lower
    assert abs(seen[-1] - bound) < 0.2 * kl


def test_a_cosine_schedule_resumed_for_more_epochs_decays_on_without_a_second_cycle(tmp_path):
    settings = dict(batch_size=16, lr=0.05, schedule="cosine", progress=False, seed=3)
    model, guide, x = vae_setup()
    run = Run.create({"model": "vae", "data": "x"}, tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        fit(model, guide, x, run=run, callback=interrupt_after(2), epochs=4, **settings)
    history = fit(model, guide, x, run=Run.open(tmp_path / "c"), resume=True, epochs=8, **settings)
    lrs = [r["lr"] for r in history.records]
    assert len(lrs) == 8 and lrs[:2] == [0.05, 0.05 * (1 + math.cos(math.pi / 4)) / 2]
    assert all(b < a for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0
    with pytest.raises(ValueError, match="cosine schedule ended at epoch 8"):
        fit(model, guide, x, run=Run.open(tmp_path / "c"), resume=True, epochs=12, **settings)


def test_a_new_learning_rate_on_resume_takes_effect(tmp_path):
    model, guide, x = vae_setup()
    fit(model, guide, x, run=Run.create({"model": "vae"}, tmp_path / "l"), epochs=2, lr=0.01, progress=False)
    history = fit(model, guide, x, run=Run.open(tmp_path / "l"), resume=True, epochs=4, lr=0.002, progress=False)
    assert [r["lr"] for r in history.records] == [0.01, 0.01, 0.002, 0.002]


def test_without_a_terminal_progress_is_one_line_per_epoch(capsys):
    model, guide, x = vae_setup()
    fit(model, guide, x, epochs=3, batch_size=8, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "train " in lines[0] and "seconds " in lines[0]


def test_fit_settings_come_in_groups_or_by_name():
    """fit(optim=Optim(lr=...)) is fit(lr=...): the same run to the bit; unknown names and wrong group types
    are refused."""
    from pprogen.inference import Objective, Optim, Stopping

    results = []
    for kwargs in (dict(optim=Optim(lr=0.02, schedule="cosine"), objective=Objective(num_particles=2),
                        stopping=Stopping(patience=3)),
                   dict(lr=0.02, schedule="cosine", num_particles=2, patience=3)):
        pyro.set_rng_seed(0)
        model, guide, x = vae_setup()
        history = fit(model, guide, x[20:], valid_data=x[:20], epochs=4, batch_size=8, progress=False, **kwargs)
        results.append((history.train_loss, params_of(model, guide)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    model, guide, x = vae_setup()
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        fit(model, guide, x, learning_rate=0.1)
    with pytest.raises(TypeError, match="optim= expects pprogen.inference.Optim, got dict"):
        fit(model, guide, x, optim={"lr": 0.1})
    with pytest.raises(TypeError, match="got lr= and optim=: give the setting in one place"):
        fit(model, guide, x, optim=Optim(lr=0.1), lr=0.2)


def test_the_checkpoint_holds_the_weights_by_name_and_a_mismatch_names_the_tensor(tmp_path):
    model, guide, x = vae_setup()
    fit(model, guide, x, run=Run.create({"model": "vae"}, tmp_path / "n"), epochs=1, progress=False)
    params = Run.open(tmp_path / "n").load_checkpoint()["params"]
    for name, tensor in model.named_parameters():
        assert torch.equal(params[f"p.model.{name}"], tensor.detach())
    for name, tensor in guide.named_parameters():
        assert torch.equal(params[f"p.guide.{name}"], tensor.detach())
    wider = pprogen.create_model("vae", x_dim=6, z_dim=3, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"checkpoint in .* holds 'model\.\S+' of shape \(\d+, 2\) where this model has"):
        fit(wider, wider.default_guide(), x, run=Run.open(tmp_path / "n"), resume=True, epochs=2, progress=False)


def test_save_weights_writes_the_weights_by_name_where_a_run_reads_them(tmp_path):
    from pprogen.inference import save_weights
    from pprogen.inference.train import _save_weights

    assert _save_weights is save_weights  # the old private name still works
    model, guide, _ = vae_setup()
    run = Run.create({"model": "vae", "data": "x"}, tmp_path / "r")
    save_weights(run, model)
    assert not (run.path / "guide.safetensors").exists()
    save_weights(run, model, guide)
    pyro.set_rng_seed(5)
    other_model, other_guide, _ = vae_setup()
    run.load_weights("model", other_model)
    run.load_weights("guide", other_guide)
    for a, b in zip(params_of(model, guide), params_of(other_model, other_guide)):
        assert torch.equal(a, b)
