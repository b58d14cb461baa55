"""Pyro's funsor backend (``pyro.contrib.funsor``): ``vectorized_markov`` and the plates of ``pyroapi``'s
``"contrib.funsor"`` backend mark the slices of a vectorized chain not to be scored and eliminate them with funsor.
pprogen scores sites as plain Pyro does, so such a program would give a wrong number silently (an HMM's log p(x)
came out 6-8 nats below its forward algorithm's, and ``fit``'s loss 15.7 for 8.8). It is refused in one line naming
the handler and ``pyro.markov``; an HMM written with ``pyro.markov`` gives the forward algorithm's figure.
"""

import pytest
import torch

pytest.importorskip("funsor")  # the test extra installs it; Pyro's funsor backend needs it

import pyro  # noqa: E402
import pyro.contrib.funsor  # noqa: E402,F401  (registers the "contrib.funsor" backend)
import pyro.distributions as dist  # noqa: E402
import pyroapi  # noqa: E402
from pyro.contrib.funsor import vectorized_markov  # noqa: E402
from pyro.ops.indexing import Vindex  # noqa: E402

from pprogen.inference import ais, evaluate, fit, log_marginal  # noqa: E402
from tests.clients.pyro_examples import forward_log_evidence, hmm  # noqa: E402

START = torch.tensor([0.6, 0.3, 0.1])
MOVE = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
MEANS = torch.tensor([-1.5, 0.0, 2.5])
REFUSAL = (r"^site '[^']+' is drawn under \w+ of Pyro's funsor backend .*write the loop with pyro\.markov and plain "
           r"pyro's plates[^\n]*$")


def series(rows: int = 3, steps: int = 4) -> torch.Tensor:
    return torch.randn(rows, steps, generator=torch.Generator().manual_seed(2)) * 1.5


def vectorized_chain(api):
    """An HMM as Pyro's funsor examples write it: ``api`` is plain pyro (vectorized_markov imported by hand) or
    pyroapi's dispatching module under the funsor backend (``api.vectorized_markov``)."""
    loop = getattr(api, "vectorized_markov", vectorized_markov)

    def model(x):
        means = api.param("means", MEANS.clone())
        with api.plate("series", x.shape[0], dim=-2):
            state = None
            for t in loop(name="time", size=x.shape[1], dim=-1):
                probs = START if state is None else Vindex(MOVE)[..., state, :]
                state = api.sample(f"state_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                y = x[:, t] if torch.is_tensor(t) else x[:, t:t + 1]
                api.sample(f"y_{t}", dist.Normal(Vindex(means)[..., state], 1.0), obs=y)

    return model


def no_guide(x):
    pass


def calls(model, x):
    return {
        "fit": lambda: fit(model, no_guide, x, elbo="enum", epochs=1, batch_size=x.shape[0], progress=False),
        "log_marginal": lambda: log_marginal(model, None, x, num_samples=4),
        "evaluate": lambda: evaluate(model, None, x, num_samples=4),
        "ais": lambda: ais(model, None, x, num_steps=2, num_chains=2),
    }


@pytest.mark.parametrize("call", ["fit", "log_marginal", "evaluate", "ais"])
def test_vectorized_markov_under_plain_pyro_is_refused_in_one_line(call):
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=REFUSAL.replace(r"\w+", "VectorizedMarkovMessenger")):
        calls(vectorized_chain(pyro), series())[call]()


@pytest.mark.parametrize("call", ["fit", "log_marginal", "evaluate", "ais"])
def test_the_funsor_backend_is_refused_in_one_line(call):
    pyro.clear_param_store()
    with pyroapi.pyro_backend("contrib.funsor"):
        api = pyroapi.pyro
        with pytest.raises(ValueError, match=REFUSAL):
            calls(vectorized_chain(api), series())[call]()


def test_the_pyro_markov_chain_the_refusal_names_gives_the_forward_algorithm():
    """The advice works: an HMM written with pyro.markov has every state summed exactly, funsor imported or not."""
    x = 2.0 * torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    estimate = log_marginal(hmm, None, x, num_samples=2)
    torch.testing.assert_close(estimate.log_prob.double(), forward_log_evidence(x), rtol=0, atol=1e-4)
