"""Replayed steps (pprogen.inference.replay) give the program's losses and gradients bit for bit, or say why not.

Each comparison trains twice from the same initial state and random stream, once replaying and once running the
Pyro program every step, and asks for identical step losses and identical parameters afterwards.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.contrib.easyguide import EasyGuide
from torch import nn

import pprogen
from pprogen.inference import fit
from pprogen.inference.estimators import ELBOS
from pprogen.inference.replay import MAX_GRAPHS, StepReplay
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer, nonfinite_gradients
from tests.models.test_contract import LIKELIHOOD_MODELS, elbo_for, examples, program, small_model

REPLAYED = ("analytic", "trace", "stl", "renyi", "iwae")
NOT_REPLAYED = {  # estimator -> why its steps run the program
    "graph": "computes its own gradients",
    "meanfield": "reads tensor values",  # Pyro's TraceMeanField_ELBO reads the loss with .item() every step
    "enum": "reads tensor values",  # Pyro's TraceEnum_ELBO asks mask.all() in Python
    "iwae_dreg": "gradients differ",  # its gradient hooks are not part of a graph of the loss
}


@pytest.fixture(autouse=True)
def no_validation():
    """As in ``fit``'s loop: Pyro's argument checks read tensor values, so a step under them is never replayed."""
    with pyro.validation_enabled(False):
        yield


def train(build, batches, fast, check_every=3, lr=1e-2, seed=1, before=None):
    """``build()`` -> (loss module); the step losses and final parameters of training on ``batches``.
    ``before(i, step)`` runs before step ``i`` (what a callback or a KL warm-up changes between steps)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss_module = build()
    first_x, first_kw = batches[0]
    params = collect_parameters(loss_module, first_x, **first_kw)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=lr), fast_path=fast,
                     check_every=check_every, record_after=1)
    pyro.set_rng_seed(seed)
    values = []
    with pyro.validation_enabled(False):
        for i, (x, kw) in enumerate(batches):
            if before is not None:
                before(i, step)
            values.append(step(x, 3.0, **kw))
    return values, [p.detach().clone() for p in params], step


def assert_same_training(build, batches, check_every=3):
    general = train(build, batches, fast=False)
    fast = train(build, batches, fast=True, check_every=check_every)
    assert fast[0] == general[0], "step losses differ"
    assert len(fast[1]) == len(general[1])
    for a, b in zip(fast[1], general[1]):
        assert torch.equal(a, b)
    return fast[2]


def tiny_vae(elbo="trace", **kw):
    def build():
        model = pprogen.create_model("vae", x_dim=12, z_dim=3, hidden_dims=(8,))
        return build_loss(model, model.default_guide(), elbo, **kw)
    return build


def binary_batches(n=10, rows=16, dim=12, last=5):
    g = torch.Generator().manual_seed(3)
    out = [((torch.rand(rows, dim, generator=g) < 0.4).float(), {}) for _ in range(n)]
    for _ in range(2):  # two epochs' smaller last batches: a shape's second step records its graph
        out.append(((torch.rand(last, dim, generator=g) < 0.4).float(), {}))
    return out


@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_every_estimator_trains_identically_replayed_or_says_why_not(elbo):
    particles = 3 if elbo in ("renyi", "iwae", "iwae_dreg") else 1
    step = assert_same_training(tiny_vae(elbo, num_particles=particles), binary_batches())
    if elbo in REPLAYED:
        assert step.replay.reason is None and step.replay.replayed > 0 and step.replay.checked >= 2
        assert len(step.replay.graphs) == 2  # the full batches and the smaller last one
    else:
        assert NOT_REPLAYED[elbo] in step.replay.reason
        assert step.replay.replayed == 0


ENUMERATED = "reads tensor values"  # Pyro's TraceEnum_ELBO asks mask.all() in Python
ZOO_NOT_REPLAYED = {  # zoo model -> why its steps run the program
    "bayesian_gmm": ENUMERATED,
    "gmm": ENUMERATED,
    "mixture_of_bernoullis": ENUMERATED,
    "bayesnet": "reads tensor values",  # which nodes are missing in a batch decides the program's structure
    "sprinkler": "reads tensor values",
}


@pytest.mark.parametrize("name", LIKELIHOOD_MODELS)
def test_every_zoo_model_trains_identically_replayed(name):
    zoo = small_model(name)
    pyro.set_rng_seed(5)
    _, _, x0, kw0 = program(zoo, examples(zoo, 6))
    batches = []
    for i in range(7):
        x = x0 if i == 0 else program(zoo, examples(zoo, 6))[2]
        batches.append((x, kw0))

    def build():
        pyro.set_rng_seed(0)
        model, guide, _, _ = program(small_model(name), x0)
        return elbo_for(name)(model, guide)

    step = assert_same_training(build, batches, check_every=2)
    if name in ZOO_NOT_REPLAYED:
        assert ZOO_NOT_REPLAYED[name] in step.replay.reason
    else:
        assert step.replay.reason is None, step.replay.reason
        assert step.replay.replayed > 0


# -- Pyro programs as Pyro users write them -----------------------------------------------------------------------

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 4)

    def forward(self, x):
        out = self.net(x)
        return out[:, :2], nn.functional.softplus(out[:, 2:]) + 1e-3


ENCODER = Encoder()
DECODER = nn.Linear(2, 4)


def module_model(x):
    pyro.module("decoder", DECODER)
    with pyro.plate("rows", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(DECODER(z), 0.5).to_event(1), obs=x)


def module_guide(x):
    pyro.module("encoder", ENCODER)
    loc, scale = ENCODER(x)
    with pyro.plate("rows", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


N_ROWS = 20


def table_model(x):
    shift = pyro.sample("shift", dist.Normal(0.0, 3.0))
    with pyro.plate("items", N_ROWS, subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(shift, 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1).expand(5, 4), 0.5).to_event(1), obs=x[idx])


def table_guide(x):
    loc = pyro.param("loc", lambda: torch.zeros(N_ROWS))
    log_scale = pyro.param("log_scale", lambda: torch.zeros(N_ROWS))
    shift_loc = pyro.param("shift_loc", lambda: torch.tensor(0.0))
    pyro.sample("shift", dist.Normal(shift_loc, 0.1))
    with pyro.plate("items", N_ROWS, subsample_size=5) as idx:
        pyro.sample("z", dist.Normal(loc[idx], log_scale[idx].exp()))


class Easy(EasyGuide):
    def guide(self, x):
        group = self.group(match="z")
        loc = pyro.param("easy_loc", lambda: torch.zeros(x.shape[0], 2))
        scale = pyro.param("easy_scale", lambda: torch.ones(x.shape[0], 2), constraint=dist.constraints.positive)
        with self.plate("rows", x.shape[0]):
            group.sample("joint", dist.Normal(loc, scale).to_event(1))


def gaussian_batches(n=8, rows=N_ROWS):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(rows, 4, generator=g), {}) for _ in range(n)]


@pytest.mark.parametrize("idiom", ["pyro.module functions", "pyro.param table, subsampled plate", "AutoNormal",
                                   "EasyGuide"])
def test_pyro_users_programs_train_identically_replayed(idiom):
    x = gaussian_batches()
    if idiom == "pyro.module functions":
        def build():
            torch.manual_seed(0)
            for layer in (ENCODER.net, DECODER):
                layer.reset_parameters()
            return build_loss(module_model, module_guide, "trace")
        batches = x
    elif idiom == "pyro.param table, subsampled plate":
        def build():
            return build_loss(table_model, table_guide, "trace")
        batches = [(b, {}) for b, _ in x]
    elif idiom == "AutoNormal":
        def build():
            torch.manual_seed(0)
            DECODER.reset_parameters()
            return build_loss(module_model, AutoNormal(module_model), "trace")
        batches = x
    else:
        def build():
            torch.manual_seed(0)
            DECODER.reset_parameters()
            return build_loss(module_model, Easy(module_model), "trace")
        batches = x
    step = assert_same_training(build, batches)
    assert step.replay.reason is None, step.replay.reason
    assert step.replay.replayed > 0


# -- falling back, one test per reason ------------------------------------------------------------------------------

def tiny_step(fast=True, **kw):
    pyro.set_rng_seed(0)
    loss_module = tiny_vae()()
    x = binary_batches(1)[0][0]
    params = collect_parameters(loss_module, x)
    kw.setdefault("record_after", 1)
    return TrainStep(loss_module, params, make_optimizer("adam", params), fast_path=fast, **kw), x


@pytest.mark.parametrize("option, reason", [
    ({"fast": False}, "switched off"),
    ({"autocast": "bf16"}, "bf16 autocast"),
    ({"compiled": True}, "compiled networks"),
])
def test_options_the_replay_does_not_cover_run_the_program(option, reason):
    step, x = tiny_step(**option)
    for _ in range(4):
        step(x)
    assert reason in step.replay.reason and step.replay.replayed == 0


def test_several_ranks_run_the_program():
    class Ranks:
        active, size = True, 2

    step, _ = tiny_step(world=Ranks())
    assert "several ranks" in step.replay.reason


def test_a_program_that_reads_tensor_values_runs_the_program():
    def model(x):
        mu = pyro.param("mu", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            scale = 1.0 if float(x.abs().max()) < 10 else 2.0  # Python reading a value: no graph can hold it
            pyro.sample("x", dist.Normal(mu, scale).to_event(1), obs=x)

    step = assert_same_training(lambda: build_loss(model, lambda x: None, "trace"), gaussian_batches())
    assert "reads tensor values" in step.replay.reason


def test_a_program_whose_python_state_changes_is_caught_and_runs_the_program():
    calls = {"n": 0}

    def model(x):
        calls["n"] += 1
        mu = pyro.param("mu", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0 + calls["n"] % 3).to_event(1), obs=x)

    def build():
        calls["n"] = 0
        return build_loss(model, lambda x: None, "trace")

    general = train(build, gaussian_batches(), fast=False)
    fast = train(build, gaussian_batches(), fast=True)
    assert "differs from the program" in fast[2].replay.reason
    assert fast[2].replay.replayed == 0
    # every step's value came from a run of the program (the check's own run included), never from a stale graph
    assert all(math.isfinite(v) for v, _ in fast[0]) and len(fast[0]) == len(general[0])


def test_a_condition_that_is_not_a_tensor_runs_the_program():
    def model(x, shift):
        mu = pyro.param("mu", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu + shift, 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    loss_module = build_loss(model, lambda x, shift: None, "trace")
    x = torch.randn(8, 4)
    params = collect_parameters(loss_module, x, shift=0.5)
    step = TrainStep(loss_module, params, make_optimizer("adam", params), record_after=1)
    for _ in range(3):
        step(x, shift=0.5)
    assert "not a tensor" in step.replay.reason


def test_steps_under_pyro_validation_run_the_program_and_later_ones_replay():
    step, x = tiny_step()
    with pyro.validation_enabled(True):
        for _ in range(4):
            step(x)
    assert step.replay.reason is None and step.replay.replayed == 0 and not step.replay.graphs
    for _ in range(4):
        step(x)
    assert step.replay.replayed > 0


def test_past_max_graphs_the_oldest_graph_goes_and_the_replay_stays_on():
    step, _ = tiny_step()
    g = torch.Generator().manual_seed(0)
    for rows in range(2, 2 + MAX_GRAPHS + 2):
        for _ in range(2):  # a shape's first step runs the program, its second records it
            step((torch.rand(rows, 12, generator=g) < 0.5).float())
    assert step.replay.reason is None and len(step.replay.graphs) == MAX_GRAPHS


def test_recording_leaves_running_statistics_as_the_program_left_them():
    class Normed(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(4)
            self.mu = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.norm(x) + self.mu, 1.0).to_event(1), obs=x)

    def run(fast):
        pyro.set_rng_seed(0)
        model = Normed()
        values, params, step = train(lambda: build_loss(model, lambda x: None, "trace"), gaussian_batches(),
                                     fast=fast)
        return values, model.norm.running_mean.clone(), model.norm.num_batches_tracked.clone(), step

    fast, general = run(True), run(False)
    assert fast[0] == general[0]
    assert torch.equal(fast[1], general[1]) and torch.equal(fast[2], general[2])


def test_a_program_that_changes_its_own_attributes_is_refused_and_trains_as_the_program():
    class Annealed(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.mu = nn.Parameter(torch.zeros(4))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.mu, 1.0 + 0.1 * self.calls).to_event(1), obs=x)

    models = {}

    def run(fast):
        models[fast] = Annealed()
        return train(lambda: build_loss(models[fast], lambda x: None, "trace"), gaussian_batches(12), fast=fast)

    fast, general = run(True), run(False)
    assert "changes its own Python attributes" in fast[2].replay.reason
    assert fast[0] == general[0] and models[True].calls == models[False].calls


def test_a_frozen_parameter_is_left_without_a_gradient_as_backward_leaves_it():
    def freeze(i, step):
        step.params[0].requires_grad_(i < 4)  # frozen from the fifth step on

    fast = train(tiny_vae(), binary_batches(10), fast=True, before=freeze)
    general = train(tiny_vae(), binary_batches(10), fast=False, before=freeze)
    assert fast[0] == general[0] and all(torch.equal(a, b) for a, b in zip(fast[1], general[1]))
    assert fast[2].replay.reason is None and fast[2].replay.replayed > 0


def test_a_new_kl_weight_or_training_flag_records_a_new_graph():
    def warm_up(i, step):
        step.loss_module.elbo.beta = 0.5 if i < 6 else 1.0  # KL warm-up changes beta between steps

    fast = train(tiny_vae(), binary_batches(12)[:12], fast=True, before=warm_up)
    assert fast[0] == train(tiny_vae(), binary_batches(12)[:12], fast=False, before=warm_up)[0]
    step = fast[2]
    assert step.replay.reason is None and len(step.replay.graphs) == 2 and step.replay.replayed > 0


def test_refresh_drops_graphs_when_a_module_attribute_changes():
    class Tempered(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.mu = nn.Parameter(torch.zeros(4))
            self.temperature = 1.0

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.mu, self.temperature).to_event(1), obs=x)

    def temper(i, step):
        if i == 5:
            step.loss_module.model.temperature = 3.0  # what a callback between epochs might do
            step.replay.refresh()  # fit calls it at each epoch's start

    def build():
        return build_loss(Tempered(), lambda x: None, "trace")

    fast = train(build, gaussian_batches(10), fast=True, before=temper)
    assert fast[0] == train(build, gaussian_batches(10), fast=False, before=temper)[0]
    step = fast[2]
    assert step.replay.reason is None and step.replay.replayed > 0


def test_a_buffer_written_after_recording_is_read_again():
    """The prior's N(0, I) scale is a module buffer: the replayed step reads it live (buffers are never folded),
    so a write to it is seen at once, as by the program."""
    def widen(i, step):
        if i == 6:
            with torch.no_grad():
                step.loss_module.model.z_scale.mul_(2.0)  # a wider prior from here on

    fast = train(tiny_vae(), binary_batches(12)[:12], fast=True, before=widen)
    assert fast[0] == train(tiny_vae(), binary_batches(12)[:12], fast=False, before=widen)[0]
    step = fast[2]
    assert step.replay.reason is None and step.replay.replayed >= 6


def test_a_buffer_written_just_before_a_checking_step_is_recorded_again():
    step, x = tiny_step(check_every=3)
    for _ in range(4):
        step(x)
    assert len(step.replay.graphs) == 1
    with torch.no_grad():
        step.loss_module.model.z_scale.mul_(2.0)
    for _ in range(2):  # the next step is a checking one: its graph is stale
        step(x)
    assert step.replay.reason is None
    for _ in range(4):
        step(x)
    assert step.replay.reason is None and len(step.replay.graphs) == 1


def test_a_finite_loss_with_a_nan_gradient_in_a_replayed_step_is_not_applied():
    # sqrt(|mu * w|) at w = 0 is finite (0) and its gradient 0 / 0: only the gradients' check can catch it
    def model(x, w):
        mu = pyro.param("mu", torch.ones(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal((mu * w.unsqueeze(-1)).abs().sqrt(), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    loss_module = build_loss(model, lambda x, w: None, "trace")
    x = torch.randn(8, 4)
    good, bad = torch.ones(8), torch.ones(8)
    bad[5] = 0.0
    params = collect_parameters(loss_module, x, w=good)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=0.1), record_after=1)
    for _ in range(5):
        assert step(x, w=good)[1]
    before = [p.detach().clone() for p in params]
    value, finite = step(x, w=bad)
    assert step.replay.last_replayed and math.isfinite(value) and not finite
    assert any(not torch.isfinite(p.grad).all() for p in params)
    for a, b in zip(before, params):
        assert torch.equal(a, b)
    assert step(x, w=good)[1]


def test_the_gradient_check_finds_every_nan_and_infinity():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        grads = [torch.randn(5, dtype=dtype), torch.randn(3, 2, dtype=dtype)]
        kept = [g.clone() for g in grads]
        assert nonfinite_gradients(grads).item() == 0.0
        for g, k in zip(grads, kept):  # multiplied by exactly one
            assert torch.equal(g, k)
        for bad in (math.inf, -math.inf, math.nan):
            grads[1][2, 1] = bad
            assert nonfinite_gradients(grads).item() == 1.0
            grads[1][2, 1] = 0.0
    mixed = [torch.randn(3), torch.randn(2, dtype=torch.float64)]
    mixed[1][0] = math.nan
    assert nonfinite_gradients(mixed).item() == 1.0
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, math.inf], (4,), check_invariants=True)
    assert nonfinite_gradients([torch.randn(3), sparse]).item() == 1.0
    assert nonfinite_gradients([]).item() == 0.0
    huge = [torch.full((10,), 1e30)]  # a norm would overflow here; the check does not
    assert nonfinite_gradients(huge).item() == 0.0 and not torch.isfinite(torch.linalg.vector_norm(huge[0]))


def test_a_nan_in_a_replayed_step_leaves_the_last_good_parameters():
    def model(x, w):
        mu = pyro.param("mu", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x * w.unsqueeze(-1))

    pyro.clear_param_store()
    loss_module = build_loss(model, lambda x, w: None, "trace")
    x = torch.randn(8, 4)
    good, bad = torch.ones(8), torch.ones(8)
    bad[3] = math.nan
    params = collect_parameters(loss_module, x, w=good)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=0.1), record_after=1)
    for _ in range(5):
        value, finite = step(x, w=good)
        assert math.isfinite(value) and finite
    assert step.replay.replayed > 0
    before = [p.detach().clone() for p in params]
    value, finite = step(x, w=bad)
    assert not finite
    assert step.replay.last_replayed  # the poisoned step was a replayed one
    assert not math.isfinite(value)
    for a, b in zip(before, params):
        assert torch.equal(a, b)
    value, _ = step(x, w=good)  # and training goes on from there
    assert math.isfinite(value)


def test_a_replayed_step_still_refuses_values_the_program_refuses():
    model = pprogen.create_model("cvae", x_dim=12, z_dim=3, hidden_dims=(8,), num_classes=3)
    loss_module = build_loss(model, model.default_guide(), "trace")
    x = (torch.rand(8, 12) < 0.5).float()
    y = torch.arange(8) % 3
    params = collect_parameters(loss_module, x, y=y)
    step = TrainStep(loss_module, params, make_optimizer("adam", params), record_after=1)
    for _ in range(4):
        step(x, y=y)
    assert step.replay.replayed > 0
    with pytest.raises(ValueError, match="label 7 is out of range for num_classes=3"):
        step(x, y=torch.where(y == 2, 7, y))


def test_fit_replays_by_default_and_reports_it():
    model = pprogen.create_model("vae", x_dim=12, z_dim=3, hidden_dims=(8,))
    x = torch.cat([b for b, _ in binary_batches(8)])
    history = fit(model, model.default_guide(), x, epochs=12, batch_size=16, progress=False)
    assert history.fast_path.startswith("replayed")  # 12 epochs of 5 steps: recorded after 50
    model = pprogen.create_model("vae", x_dim=12, z_dim=3, hidden_dims=(8,))
    history = fit(model, model.default_guide(), x, epochs=1, batch_size=16, progress=False, fast_path=False)
    assert "switched off" in history.fast_path


def test_a_short_run_never_records():
    step, x = tiny_step(record_after=50)
    for _ in range(50):
        step(x)
    assert not step.replay.graphs and step.replay.replayed == 0
    step(x)
    assert len(step.replay.graphs) == 1


@pytest.mark.parametrize("option", ["check_every", "record_after"])
def test_replay_settings_must_be_positive(option):
    with pytest.raises(ValueError, match=f"{option} must be a positive integer"):
        StepReplay(nn.Linear(1, 1), [], **{option: 0})
