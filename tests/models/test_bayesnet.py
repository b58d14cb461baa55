import itertools
import json
import math

import pyro
import pytest
import torch

import pprogen
from pprogen.inference import fit, make_elbo
from pprogen.models import BayesianNetwork, SpecError, fully_connected_spec
from pprogen.models.bayesnet import SPRINKLER

STRUCTURE = {name: {k: v for k, v in node.items() if k != "cpt"} for name, node in SPRINKLER.items()}


def random_network(num_nodes=6, seed=0, max_states=3, edge_prob=0.5):
    """A random DAG (edges only from earlier to later nodes, listed in shuffled order) with random CPTs."""
    g = torch.Generator().manual_seed(seed)
    cards = torch.randint(2, max_states + 1, (num_nodes,), generator=g).tolist()
    spec = {}
    for i in torch.randperm(num_nodes, generator=g).tolist():
        parents = [j for j in range(i) if torch.rand((), generator=g) < edge_prob]
        shape = [cards[j] for j in parents] + [cards[i]]
        cpt = torch.distributions.Dirichlet(torch.ones(shape, dtype=torch.float64)).sample()
        spec[f"n{i}"] = {"parents": [f"n{j}" for j in parents], "states": cards[i], "cpt": cpt.tolist()}
    return spec


def brute_force_joint(spec):
    """log p(x) of every configuration, multiplying the spec's tables directly (no pprogen code)."""
    names = list(spec)
    cards = [torch.tensor(spec[n]["cpt"]).shape[-1] for n in names]
    configs = torch.tensor(list(itertools.product(*(range(c) for c in cards))), dtype=torch.float64)
    log_p = torch.zeros(len(configs), dtype=torch.float64)
    for i, n in enumerate(names):
        table = torch.tensor(spec[n]["cpt"], dtype=torch.float64)
        index = tuple(configs[:, names.index(p)].long() for p in spec[n]["parents"]) + (configs[:, i].long(),)
        log_p += table[index].log()
    return configs, log_p


def brute_force_query(configs, log_p, targets, evidence, cards):
    keep = torch.ones(len(configs), dtype=torch.bool)
    for col, value in evidence.items():
        keep &= configs[:, col] == value
    table = torch.zeros(cards, dtype=torch.float64)
    for config in itertools.product(*(range(c) for c in cards)):
        match = keep.clone()
        for col, value in zip(targets, config):
            match &= configs[:, col] == value
        table[config] = log_p[match].exp().sum()
    return table / table.sum()


def test_sprinkler_matches_the_published_posteriors():
    net = pprogen.create_model("sprinkler", cpt="fixed")
    assert net.query("Rain", {"GrassWet": "yes"})[1].item() == pytest.approx(0.7079, abs=1e-4)
    assert net.query("Sprinkler", {"GrassWet": "yes"})[1].item() == pytest.approx(0.4298, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_queries_marginals_and_mpe_equal_brute_force_enumeration(seed):
    spec = random_network(seed=seed)
    net = BayesianNetwork(spec, cpt="fixed").double()
    configs, log_p = brute_force_joint(spec)
    cards = [n.cardinality for n in net.nodes]
    evidence = {net.names[0]: 1, net.names[3]: 0}
    cols = {net.names.index(k): v for k, v in evidence.items()}
    for targets in ([net.names[1]], [net.names[2], net.names[5]]):
        ids = [net.names.index(t) for t in targets]
        expected = brute_force_query(configs, log_p, ids, cols, [cards[i] for i in ids])
        assert torch.allclose(net.query(targets, evidence).double(), expected, atol=1e-5)
    marginals = net.marginals(evidence)
    for i, name in enumerate(net.names):
        expected = brute_force_query(configs, log_p, [i], cols, [cards[i]])
        assert torch.allclose(marginals[name].double(), expected, atol=1e-5), name
    keep = torch.ones(len(configs), dtype=torch.bool)
    for col, value in cols.items():
        keep &= configs[:, col] == value
    best = configs[keep][log_p[keep].argmax()]
    mpe = net.most_probable(evidence)
    assert [net.nodes[i].states.index(mpe[name]) for i, name in enumerate(net.names)] == best.long().tolist()


def test_log_prob_with_missing_values_is_the_exact_marginal_and_the_enumerated_elbo():
    spec = random_network(seed=4)
    net = BayesianNetwork(spec, cpt="fixed").double()
    configs, log_p = brute_force_joint(spec)
    pyro.set_rng_seed(0)
    x = net.sample(40).double()
    x[torch.rand(x.shape) < 0.4] = math.nan
    expected = []
    for row in x:
        keep = torch.ones(len(configs), dtype=torch.bool)
        for col in (~torch.isnan(row)).nonzero()[:, 0]:
            keep &= configs[:, col] == row[col]
        expected.append(log_p[keep].logsumexp(0))
    assert torch.allclose(net.log_prob(x).double(), torch.stack(expected), atol=1e-6)
    elbo = -pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(net, net.default_guide(), x)
    assert elbo == pytest.approx(torch.stack(expected).sum().item(), abs=1e-5)


@pytest.mark.parametrize("cpd", ["table", "logistic"])
def test_probabilities_over_all_1024_configurations_sum_to_one(cpd):
    spec = random_network(num_nodes=10, seed=5, max_states=2, edge_prob=0.3)
    if cpd == "logistic":
        spec = {n: {k: v for k, v in node.items() if k != "cpt"} for n, node in spec.items()}
    net = BayesianNetwork(spec, cpd=cpd, cpt="fixed" if cpd == "table" else "learned").double()
    if cpd == "logistic":
        with torch.no_grad():
            for p in net.parameters():
                p.normal_()
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)), dtype=torch.float64)
    assert abs(net.log_prob(configs).logsumexp(0).exp().item() - 1) < 1e-5


def test_logistic_cpds_on_the_fully_connected_graph_are_fvsbn():
    torch.manual_seed(0)
    fvsbn = pprogen.create_model("fvsbn", x_dim=10).double()
    with torch.no_grad():
        fvsbn.weight.normal_()
        fvsbn.bias.normal_()
    net = BayesianNetwork(fully_connected_spec(10), cpd="logistic").double()
    with torch.no_grad():  # class 0's logit is the reference: class 1 carries FVSBN's bias and weights
        for i in range(10):
            getattr(net, f"bias_{i}").copy_(torch.tensor([0.0, fvsbn.bias[i].item()]))
            for j in range(i):
                getattr(net, f"weight_{i}_{j}").copy_(torch.tensor([[0.0, fvsbn.weight[i, j].item()]]))
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)), dtype=torch.float64)
    assert torch.allclose(net.log_prob(configs), fvsbn.log_prob(configs), atol=1e-10)


def test_ancestral_and_conditional_samples_follow_the_exact_probabilities():
    net = pprogen.create_model("sprinkler", cpt="fixed")
    pyro.set_rng_seed(0)
    free = net.sample(20000)
    marginals = net.marginals()
    for i, name in enumerate(net.names):
        assert abs(free[:, i].mean().item() - marginals[name][1].item()) < 0.015, name
    given = net.sample(20000, {"GrassWet": "yes"})
    assert (given[:, 3] == 1).all()
    joint = net.query(["Sprinkler", "Rain"], {"GrassWet": "yes"})
    for s, r in itertools.product(range(2), range(2)):
        freq = ((given[:, 1] == s) & (given[:, 2] == r)).float().mean().item()
        assert abs(freq - joint[s, r].item()) < 0.015


def test_closed_form_counts_recover_the_generating_tables():
    truth = pprogen.create_model("sprinkler", cpt="fixed")
    pyro.set_rng_seed(1)
    x = truth.sample(50000)
    learned = BayesianNetwork(STRUCTURE).fit_counts(x, prior=1.0)
    for got, want in zip(learned.cpts(), truth.cpts()):
        assert (got - want).abs().max() < 0.015
    # the closed form itself on four rows: Cloudy seen as (0, 1, 1, 1) with a unit prior -> (2/6, 4/6)
    small = torch.tensor([[0.0, 0, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]])
    cloudy = BayesianNetwork(STRUCTURE).fit_counts(small, prior=1.0).cpts()[0]
    assert torch.allclose(cloudy, torch.tensor([2 / 6, 4 / 6]), atol=1e-6)


def test_svi_from_data_with_missing_values_recovers_the_tables():
    truth = pprogen.create_model("sprinkler", cpt="fixed")
    pyro.set_rng_seed(2)
    x = truth.sample(20000)
    x[torch.rand(x.shape) < 0.25] = math.nan
    learned = BayesianNetwork(STRUCTURE)
    fit(learned, learned.default_guide(), x, elbo=make_elbo("enum"), epochs=8, lr=0.05, batch_size=500,
        progress=False, seed=0)
    for got, want in zip(learned.cpts(), truth.cpts()):
        assert (got - want).abs().max() < 0.04


def test_dirichlet_cpts_exact_posterior_attains_the_closed_form_evidence_and_svi_finds_its_mean():
    truth = pprogen.create_model("sprinkler", cpt="fixed")
    pyro.set_rng_seed(3)
    x = truth.sample(4000)
    net = BayesianNetwork(STRUCTURE, cpt="dirichlet", prior_concentration=2.0)
    guide = net.default_guide()
    posterior = net.posterior_concentrations(x)
    guide.set_concentrations(posterior)
    # with q equal to the exact posterior, log p(x, theta) - log q(theta) = log p(x) for every draw
    for _ in range(3):
        elbo = -pyro.infer.Trace_ELBO().loss(net, guide, x)
        assert elbo == pytest.approx(net.log_evidence(x).item(), rel=1e-4)
    net2 = BayesianNetwork(STRUCTURE, cpt="dirichlet", prior_concentration=2.0)
    guide2 = net2.default_guide()
    fit(net2, guide2, x, elbo=make_elbo("trace", num_particles=8), epochs=100, lr=0.1, batch_size=4000,
        patience=None, progress=False, seed=0)
    for i, name in enumerate(net2.names):
        exact_mean = posterior[i] / posterior[i].sum(-1, keepdim=True)
        assert (guide2.mean(name) - exact_mean).abs().max() < 0.03, name
    point = net2.posterior_mean_network(guide2)
    assert point.query("Rain", {"GrassWet": "yes"})[1].item() == pytest.approx(0.7079, abs=0.05)


def test_spec_loads_from_a_json_file_and_round_trips(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(SPRINKLER))
    net = pprogen.create_model("bayesnet", spec=str(path), cpt="fixed")
    again = BayesianNetwork(net.to_spec(), cpt="fixed")
    for a, b in zip(net.cpts(), again.cpts()):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["Cloudy"].update(parents=["GrassWet"], cpt=[[0.5, 0.5], [0.5, 0.5]]), "cycle Cloudy -> Sprinkler -> GrassWet -> Cloudy; a Bayesian network must be a DAG"),
    (lambda s: s["Rain"].update(cpt=[[0.8, 0.3], [0.2, 0.8]]), "Cloudy=no sums to 1.1, not 1"),
    (lambda s: s["Rain"].update(cpt=[0.8, 0.2]), "has shape (2,) but its parents (Cloudy: 2) and 2 states need (2, 2)"),
    (lambda s: s["Rain"].update(parents=["Cloudey"]), "parent 'Cloudey', which is not a node; did you mean 'Cloudy'"),
    (lambda s: s["Rain"].update(cpt=[[1.2, -0.2], [0.2, 0.8]]), "negative"),
    (lambda s: s["Rain"].update(cpd=[[1.0, 0.0], [0.2, 0.8]]), "unknown field 'cpd'; did you mean 'cpt'"),
])
def test_bad_specs_fail_with_one_line_naming_the_fix(change, message):
    spec = json.loads(json.dumps(SPRINKLER))
    change(spec)
    with pytest.raises(SpecError) as err:
        BayesianNetwork(spec, cpt="fixed")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_evidence_and_data_fail_with_one_line_naming_the_fix():
    net = pprogen.create_model("sprinkler", cpt="fixed")
    with pytest.raises(ValueError, match="unknown node 'Rian'; did you mean 'Rain'"):
        net.query("Cloudy", {"Rian": 1})
    with pytest.raises(ValueError, match="Rain=2 is not a state of Rain; use one of no, yes or 0..1"):
        net.query("Cloudy", {"Rain": 2})
    with pytest.raises(ValueError, match="probability 0"):  # the sprinkler off and no rain never wet the grass
        net.query("Cloudy", {"Sprinkler": "off", "Rain": "no", "GrassWet": "yes"})
    with pytest.raises(ValueError, match=r"column 2 \(Rain\) holds 3 in row 0"):
        net.log_prob(torch.tensor([[0.0, 0, 3, 1]]))
    with pytest.raises(ValueError, match=r"data must be \(N, 4\)"):
        net.log_prob(torch.zeros(2, 3))
