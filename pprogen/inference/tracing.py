"""Lean tracing shared by the estimators and the evidence: site collection, particle plates, per-datum sums.

Pyro's ``Trace`` records everything a program does and is then pruned and copied; the estimators here
need only the sample sites, so one small effect handler records them as the program runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
import weakref
from typing import Callable

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample

PARTICLES = "num_particles_vectorized"


class Replay(dict):
    """Values to replay by site name, with ``full_sizes``: the full size of each plate whose indices it holds."""

    full_sizes: dict[str, int]


FUNSOR_BACKEND = "pyro.contrib.funsor"


class FunsorBackendError(ValueError):
    """A program run under Pyro's funsor backend: its sites are not scored as plain Pyro's are (see
    :func:`refuse_funsor_backend`). The probes that try a program several ways let it through."""


def refuse_funsor_backend(msg: dict) -> None:
    """Refuse a site drawn under a handler of ``pyro.contrib.funsor`` (``vectorized_markov``, or the plates of the
    ``pyroapi`` backend ``"contrib.funsor"``): that backend marks the slices of a vectorized chain not to be scored
    and eliminates them with funsor, so scoring its sites as plain Pyro does gives a wrong number, silently (an
    HMM's log p(x) came out 6-8 nats below its forward algorithm's). Free unless that backend has been imported."""
    if FUNSOR_BACKEND not in sys.modules:
        return
    for frame in _PYRO_STACK:
        if type(frame).__module__.startswith(FUNSOR_BACKEND):
            raise FunsorBackendError(
                f"site {msg['name']!r} is drawn under {type(frame).__name__} of Pyro's funsor backend "
                "(pyro.contrib.funsor: vectorized_markov or pyroapi's 'contrib.funsor'), whose sites pprogen cannot "
                "score; write the loop with pyro.markov and plain pyro's plates, which every estimator and evidence "
                "path of pprogen sums exactly (an HMM by its forward algorithm)"
            )


class SiteCollector(Messenger):
    """Collects a program's sample sites; optionally replays latent values (e.g. from a guide).

    The indices that subsampled plates draw (``pyro.plate(name, N, subsample_size=B)``) are kept apart in
    ``subsamples`` and replayed too when ``replay`` holds them, so a model sees the guide's minibatch: into a
    plate of the same subsample size, or, as Pyro's replay does, into a plate of the same full size that does
    not subsample itself (LDA's idiom: only the guide's plate has ``subsample_size``; Pyro scales it by N / B).
    """

    def __init__(self, replay: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.sites: list[dict] = []
        self.subsamples: dict[str, torch.Tensor] = {}
        self.full_sizes: dict[str, int] = {}
        self.replay = replay

    def _pyro_sample(self, msg: dict) -> None:
        refuse_funsor_backend(msg)
        if self.replay is not None and not msg["is_observed"] and msg["name"] in self.replay:
            value = self.replay[msg["name"]]
            if site_is_subsample(msg):  # the guide's minibatch, if it is one of this plate's
                fn = msg["fn"]
                wanted = fn.subsample_size if fn.subsample_size is not None else fn.size
                full = getattr(self.replay, "full_sizes", {}).get(msg["name"])
                minibatch = full == fn.size and fn.subsample_size in (None, fn.size) and value.dim() == 1
                if (value.dim() != 1 or value.shape[0] != wanted) and not minibatch:
                    return
            msg["value"] = value
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        if site_is_subsample(msg):
            self.subsamples[msg["name"]] = msg["value"]
            self.full_sizes[msg["name"]] = msg["fn"].size
        else:
            self.sites.append(msg)

    def values(self) -> Replay:
        """Every recorded value by name, subsample indices included: what a replay needs."""
        values = Replay((s["name"], s["value"]) for s in self.sites)
        values.update(self.subsamples)
        values.full_sizes = dict(self.full_sizes)
        return values


class fix_subsample(Messenger):
    """Makes ``pyro.plate(plate_name, ...)`` take exactly ``indices`` (no random minibatch, scale 1 when
    they are all of its rows): how evidence and validation visit every row of a subsampling program."""

    def __init__(self, plate_name: str, indices: torch.Tensor) -> None:
        super().__init__()
        self.plate_name = plate_name
        self.indices = indices

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.plate_name and site_is_subsample(msg):
            msg["value"] = self.indices
            msg["done"] = True


class LocalParticlePlate(PlateMessenger):
    """A particle plate that applies only to sites inside the ``data`` plate.

    Local latents get ``size`` draws per data point while global latents are drawn once and shared by
    all particles: the construction under which per-datum importance-weighted bounds stay valid.
    """

    def __init__(self, size: int, dim: int, data_plate: str = "data") -> None:
        super().__init__(PARTICLES, size, dim=dim)
        self.data_plate = data_plate

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and in_plate(msg, self.data_plate):
            super()._process_message(msg)


class scale_latents(Messenger):
    """Multiplies the log-density of every unobserved sample site by ``beta`` (the KL weight)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = msg["scale"] * self.beta


def in_plate(site: dict, plate_name: str) -> bool:
    return any(f.name == plate_name for f in site["cond_indep_stack"])


def masked_log_prob(site: dict) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    return log_prob * site["mask"] if site["mask"] is not None else log_prob


def site_log_prob_sum(site: dict) -> torch.Tensor:
    """The scaled, masked log-density of one recorded site, summed."""
    total = masked_log_prob(site).sum()
    scale = site["scale"]
    return total if isinstance(scale, float) and scale == 1.0 else total * scale


def per_datum(log_prob: torch.Tensor, particle_dim: int, data_dim: int, num_dims: int) -> torch.Tensor:
    """Sum a site's log-density over every batch dim but the particle and data dims -> ``(K|1, B|1)``."""
    if log_prob.dim() < num_dims:
        log_prob = log_prob.reshape((1,) * (num_dims - log_prob.dim()) + log_prob.shape)
    keep = {log_prob.dim() + particle_dim, log_prob.dim() + data_dim}
    other = [d for d in range(log_prob.dim()) if d not in keep]
    if other:
        log_prob = log_prob.sum(other)
    return log_prob.reshape(log_prob.shape[0], -1)


_DIRECT: "weakref.WeakKeyDictionary[Callable, bool]" = weakref.WeakKeyDictionary()


def direct_call(fn: Callable) -> Callable:
    """:func:`_direct_call`, decided once per module (register hooks before its first call)."""
    if not isinstance(fn, PyroModule):
        return fn
    direct = _DIRECT.get(fn)
    if direct is None:
        direct = _DIRECT[fn] = _direct_call(fn) is not fn
    return fn.forward if direct else fn


def _direct_call(fn: Callable) -> Callable:
    """``fn.forward`` for a PyroModule whose ``__call__`` would only announce parameters, else ``fn``.

    ``PyroModule.__call__`` opens a context in which every access to a plain ``nn.Module`` child
    emits ``pyro.module`` (one ``pyro.param`` message per parameter) so Pyro's global param store
    can find them. Torch-native training reads ``module.parameters()`` instead, so for a module
    tree that holds no ``PyroParam``/``PyroSample`` and no hooks, calling ``forward`` directly runs
    the same program without that bookkeeping (about a tenth of a small VAE's step on a CPU).
    """
    from pyro.infer.autoguide import AutoGuide

    if not isinstance(fn, PyroModule) or type(fn).__call__ is not PyroModule.__call__ or isinstance(fn, AutoGuide):
        return fn  # autoguides subsample their tables through PyroModule's pyro.param messages
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return fn
    for module in fn.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return fn
        if isinstance(module, PyroModule) and (module._pyro_params or module._pyro_samples):
            return fn
    return fn.forward


def run_pair(model: Callable, guide: Callable, args, kwargs, replay_transform=None):
    """Run the guide, then the model on the guide's latent values and subsample indices; returns both site
    lists and the replayed values.

    ``model`` and ``guide`` are called as given: pass them through ``direct_call`` first to skip
    PyroModule's parameter announcements.
    """
    with SiteCollector() as guide_run:
        guide(*args, **kwargs)
    replay = guide_run.values()
    if replay_transform is not None:
        full_sizes = replay.full_sizes
        replay = Replay(replay_transform(replay))
        replay.full_sizes = full_sizes
    with SiteCollector(replay) as model_run:
        model(*args, **kwargs)
    return guide_run.sites, model_run.sites, replay


def rerun_guide(guide: Callable, values: dict[str, torch.Tensor], args, kwargs) -> list[dict]:
    """The guide's sites re-evaluated at ``values`` with its parameters live, however it reaches them
    (module attributes, ``pyro.module``, ``pyro.param``, autoguides).

    With ``values`` detached, the log-densities' gradients are the score terms
    :math:`\\partial_\\phi \\log q(z; \\phi)` at fixed z, which the path-derivative estimators subtract.
    """
    with SiteCollector(values) as run:
        direct_call(guide)(*args, **kwargs)
    return run.sites


def score_term(guide: Callable, values: dict[str, torch.Tensor], args, kwargs, reduce: Callable,
               live: frozenset[str] = frozenset()) -> torch.Tensor:
    """``reduce(log q(z_detached; phi))`` minus its own value: zero, with the score term as its gradient.
    The values named in ``live`` stay attached (DReG keeps a global latent's path into its local sites)."""
    detached = {name: value if name in live else value.detach() for name, value in values.items()}
    total = 0.0
    for site in rerun_guide(guide, detached, args, kwargs):
        total = total + reduce(site)
    if not torch.is_tensor(total):
        return torch.zeros(())
    return total - total.detach()


def probe_sites(model: Callable, guide: Callable | None, args, kwargs) -> tuple[list[dict], list[dict]]:
    """Guide and model sites from one sandboxed run (see :func:`sandbox`) without gradients."""
    with sandbox(model, guide) as (model, guide):
        return probe_pair(model, guide, args, kwargs)


def probe_pair(model: Callable, guide: Callable | None, args, kwargs) -> tuple[list[dict], list[dict]]:
    """Guide and model sites from one run (inside a :func:`sandbox`), plate sizes checked."""
    if guide is None:
        with SiteCollector() as model_run:
            direct_call(model)(*args, **kwargs)
        return [], model_run.sites
    guide_sites, model_sites, _ = run_pair(direct_call(model), direct_call(guide), args, kwargs)
    check_plate_sizes(guide_sites, model_sites)
    return guide_sites, model_sites


def check_plate_sizes(guide_sites: list[dict], model_sites: list[dict]) -> None:
    """A plate must have as many entries in the guide as in the model; a guide sized by other rows (an
    autoguide or a per-datum table built on the rows it was trained on) is refused, never broadcast."""
    sizes = {}
    for site in model_sites:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                sizes.setdefault(frame.name, frame.size)
    for site in guide_sites:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and sizes.get(frame.name, frame.size) != frame.size:
                raise ValueError(
                    f"plate {frame.name!r} has {frame.size} entries in the guide (site {site['name']!r}) but "
                    f"{sizes[frame.name]} in the model: the guide is sized by other rows than it is handed (an "
                    "autoguide or per-datum table built on the rows it was fitted to); hand it those rows"
                )


@contextlib.contextmanager
def sandbox(model: Callable, guide: Callable | None):
    """Copies of ``model`` and ``guide`` to probe with, a throw-away param store that starts with the current
    parameters, and forked random generators, without gradients: a probe builds no lazily created parameter
    (autoguides, per-datum tables) in the real objects and leaves the random streams as found. Objects that
    cannot be copied are probed as they are (their ``pyro.param`` tables still land in the throw-away store)."""
    try:
        copies = _copy_program(model, guide)
    except Exception:  # an object that refuses to be copied: probe the original
        copies = (model, guide)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    store = pyro.get_param_store()
    handles = {name: p.__dict__.get("unconstrained") for name, p in store._params.items()}
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), store.scope(store.get_state()), \
                warnings.catch_warnings(), check_param_shapes():
            warnings.simplefilter("ignore")
            yield copies
    finally:  # Pyro's get_state drops each parameter's .unconstrained handle: put them back
        for name, handle in handles.items():
            if handle is not None and name in store._params:
                store._params[name].unconstrained = handle


def _copy_program(model: Callable, guide: Callable | None):
    """``deepcopy((model, guide))``, minding Pyro's autoguides: their ``__getstate__`` drops the model and
    master references *of the original* (so that pickles hold no weakrefs), which are put back on the
    originals and pointed at the copies."""
    from pyro.infer.autoguide import AutoGuide

    autoguides = [m for m in (guide.modules() if isinstance(guide, torch.nn.Module) else ()) if isinstance(m, AutoGuide)]
    saved = [(m, m.__dict__.get("_model"), m.__dict__.get("master")) for m in autoguides]
    try:
        model_copy, guide_copy = copy.deepcopy((model, guide))
    finally:
        for m, model_ref, master in saved:
            m._model, m.master = model_ref, master
    if autoguides:
        for original, copied in zip(guide.modules(), guide_copy.modules()):
            if isinstance(original, AutoGuide) and original.__dict__.get("_model") is not None:
                copied._model = (model_copy if original.model is model else original.model,)
    return model_copy, guide_copy


class check_param_shapes(Messenger):
    """Refuses a ``pyro.param`` asked for with an initial value of another shape than the stored one: the
    sign of a per-datum table sized by the rows a program is handed, which would otherwise be reused
    silently for other rows."""

    def _pyro_param(self, msg: dict) -> None:
        args = msg["args"]
        store = pyro.get_param_store()
        if len(args) < 2 or args[1] is None or args[0] not in store:
            return
        name = args[0]
        init = args[1]() if callable(args[1]) else args[1]  # a lazy initial value, as pyro.param would make it
        if torch.is_tensor(init) and tuple(store._params[name].shape) != tuple(init.shape):
            raise ValueError(
                f"guide parameter {name!r} exists with shape {tuple(store._params[name].shape)} but is asked for "
                f"with shape {tuple(init.shape)}: a per-datum table sized by the rows the program is handed; "
                "size it by the whole data set and index it with a subsampled plate "
                "(pyro.plate(name, N, subsample_size=B) as idx: table[idx]), or fit full batch"
            )


def data_rows(args, kwargs) -> int | None:
    """The number of rows handed to a program: the length of its first tensor argument."""
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    return None


def find_data_plate(sites: list[dict], rows: int | None, plate_name: str | None = None):
    """The per-datum plate's frame among ``sites``: the one named ``plate_name``, else the plate whose size
    (or, subsampled, whose full size) is the number of rows handed to the program, the outermost when
    several are. ``None`` when the program has no plate at all; a one-line error when it cannot be told."""
    frames: dict[str, object] = {}
    for site in sites:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.name != PARTICLES:
                frames.setdefault(frame.name, frame)
    if plate_name is not None:
        if plate_name not in frames:
            named = ", ".join(repr(n) for n in frames) or "none"
            raise ValueError(
                f"the program has no vectorized plate named {plate_name!r} (its plates: {named}); pass the "
                "name of the plate its per-datum sites sit in as plate_name (--plate-name on the command line)"
            )
        return frames[plate_name]
    if not frames:
        return None
    sizes = {name: (f.size, f.full_size or f.size) for name, f in frames.items()}
    matching = [name for name, (size, full) in sizes.items() if rows in (size, full)]
    if len(matching) > 1:  # nested plates of the same size: the one every other sits inside
        outer = [m for m in matching if all(
            any(f.name == m for f in s["cond_indep_stack"]) for s in sites
            if any(f.name in matching for f in s["cond_indep_stack"]))]
        matching = outer if len(outer) == 1 else matching
    if len(matching) == 1:
        return frames[matching[0]]
    if "data" in matching:
        return frames["data"]
    found = ", ".join(f"{n!r} (size {s})" for n, (s, _) in sizes.items())
    if not matching:
        raise ValueError(
            f"no plate has one entry per row of the {rows} rows handed to the program (plates: {found}): a plate of "
            "constant size scores exactly that many rows; hand the program that many rows (rows along the first axis), "
            f"or size the plate by the data (pyro.plate({next(iter(sizes))!r}, len(x)), per-row constants passed as "
            "condition)"
        )
    raise ValueError(
        f"cannot tell which plate holds one entry per row of the {rows} rows handed to the program (plates: "
        f"{found}); pass plate_name='...' (--plate-name) naming the per-datum plate"
    )


def plate_nesting(sites: list[dict]) -> int:
    """How many plate dimensions the sites use (0 when none)."""
    return max((-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized), default=0)


def guess_max_plate_nesting(model: Callable, guide: Callable | None, args, kwargs) -> int:
    """How many plate dimensions the program uses, found by running it once (see :func:`probe_sites`)."""
    guide_sites, model_sites = probe_sites(model, guide, args, kwargs)
    return plate_nesting(guide_sites + model_sites)


def check_reparameterized(sites: list[dict], estimator: str) -> None:
    for site in sites:
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                f"the {estimator!r} estimator needs reparameterized latents, but guide site "
                f"{site['name']!r} ({type(site['fn']).__name__}) has no rsample; use elbo 'trace' or 'graph'"
            )


def check_sites_match(guide_sites: list[dict], model_sites: list[dict]) -> None:
    guide_names = {s["name"] for s in guide_sites}
    model_names = {s["name"] for s in model_sites}
    for site in model_sites:
        if not site["is_observed"] and site["name"] not in guide_names:
            if site["infer"].get("enumerate") == "parallel":
                raise ValueError(
                    f"model latent site {site['name']!r} is marked for enumeration (infer={{'enumerate': "
                    "'parallel'}), and only elbo 'enum' sums enumerated sites out: fit with elbo='enum' "
                    "(make_elbo('enum')), or sample the site in the guide"
                )
            raise ValueError(
                f"model latent site {site['name']!r} has no match in the guide; "
                "sample it in the guide too, or observe it in the model"
            )
    for site in guide_sites:
        if site["name"] not in model_names and not site["infer"].get("is_auxiliary"):
            raise ValueError(
                f"guide site {site['name']!r} is not in the model; rename it to match a "
                "model latent site or mark it infer={'is_auxiliary': True}"
            )


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` point at the first caller outside pprogen, Pyro and torch (the
    user's line), from the function that calls this one."""
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename for part in _LIBRARIES):
        frame, level = frame.f_back, level + 1
    return level


_LIBRARIES = tuple(os.sep + name + os.sep for name in ("pprogen", "pyro", "torch"))


def particle_plate(size: int, nesting: int) -> pyro.plate:
    return pyro.plate(PARTICLES, size, dim=-1 - nesting)
