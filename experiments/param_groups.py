"""Parameter groups: each parameter SVI trains falls in exactly one of three groups, each with its own step size.

* ``model``: every parameter of the model module (the generative model's point-estimated parameters: mixture
  weights and locations, the VAE's decoder, the factorial HMM's emissions, ...).
* ``local``: the guide's free per-point parameters, the ones whose size grows with the number of points N (a
  mean-field guide's logits per point, LDA's gamma per document and phi per word entry, the structured guides'
  pseudo-emissions per sequence). A guide names them itself, by attribute, in ``local_parameters`` (a tuple of
  the attribute names: a class attribute, or set in ``__init__`` where the names depend on the sizes); a guide
  without the attribute has none.
* ``network``: every other guide parameter, shared by all points: the weights of the guide's networks (the
  amortised encoders, TraceGraph_ELBO's network baselines) and the guide's own global factors (q(beta)'s lambda
  when it takes gradient steps, the structured families' chain logits, the tagger's q(A)). None of them grows
  with N.

``svi.lr_model``, ``svi.lr_network`` and ``svi.lr_local`` set each group's step size (unset: ``svi.lr``), and a
decay to ``svi.lr_final`` scales every group by the same factor, so group g ends at lr_g * lr_final / lr. A run
that sets none of the three keys builds the optimiser exactly as before there were groups: one group over every
parameter in the order model then guide, so its numbers and its checkpoints' optimiser state are unchanged.
"""

from __future__ import annotations

from torch import nn

from .config import SVIConfig

GROUPS = ("model", "network", "local")
UNCONSTRAINED = "_unconstrained"  # PyroModule stores a PyroParam ``name`` as the parameter ``name_unconstrained``


def local_parameters(guide: nn.Module) -> tuple[str, ...]:
    """The attribute names of ``guide``'s free per-point parameters (its ``local_parameters``; () if it has none)."""
    return tuple(getattr(guide, "local_parameters", ()))


def split(model: nn.Module, guide: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """group -> [(name, parameter)] over the trainable parameters (``requires_grad``) of ``model`` and ``guide``, each
    in exactly one group, in ``named_parameters`` order (names as ``model.<name>`` and ``guide.<name>``). Raises
    ValueError when a name the guide declares local is not one of its parameters (a mistake in the guide)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    groups["model"] = [(f"model.{n}", p) for n, p in model.named_parameters() if p.requires_grad]
    declared = set(local_parameters(guide))
    names = [n for n, _ in guide.named_parameters()]
    missing = sorted(declared - {n.removesuffix(UNCONSTRAINED) for n in names})
    if missing:
        raise ValueError(f"{type(guide).__name__} declares local parameters {missing} that are not among its "
                         f"parameters {names}")
    for n, p in guide.named_parameters():
        if p.requires_grad:  # a frozen one (moved by the guide's own local update, guides/local.py) is in no group
            groups["local" if n.removesuffix(UNCONSTRAINED) in declared else "network"].append((f"guide.{n}", p))
    return groups


def learning_rates(cfg: SVIConfig) -> dict[str, float]:
    """group -> its initial step size: ``svi.lr_<group>``, or ``svi.lr`` where that is unset."""
    given = {"model": cfg.lr_model, "network": cfg.lr_network, "local": cfg.lr_local}
    return {g: cfg.lr if given[g] is None else given[g] for g in GROUPS}


def grouped(cfg: SVIConfig) -> bool:
    """Whether the config sets any group's step size (otherwise the optimiser has the single group of old)."""
    return any(v is not None for v in (cfg.lr_model, cfg.lr_network, cfg.lr_local))


def optimiser_groups(model: nn.Module, guide: nn.Module, cfg: SVIConfig) -> list:
    """What the torch optimiser is built from: without group keys, the flat list of every trainable parameter
    (model first, then guide: the single group of a run before groups existed); with them, one param group per
    non-empty group, ``{"params", "lr", "group"}`` (``group``: its name, kept in the optimiser's state)."""
    groups = split(model, guide)  # checks the guide's declaration in either case
    if not grouped(cfg):
        return [p for _, p in model.named_parameters() if p.requires_grad] + \
            [p for _, p in guide.named_parameters() if p.requires_grad]
    lrs = learning_rates(cfg)
    return [{"params": [p for _, p in groups[g]], "lr": lrs[g], "group": g} for g in GROUPS if groups[g]]
