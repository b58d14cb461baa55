import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_and_validated():
    """Every test starts from a fixed seed, an empty param store and argument validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
