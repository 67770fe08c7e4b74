"""The pictures people expect of a VAE (reconstructions, samples, the latent map and manifold), drawn from the
fitted decoders and guides; the runner writes them into the run folder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.exact import ppca
from ..models.vae import Decoder


def _posterior_layers(decoder: Decoder, x: Tensor, guide) -> list[Tensor] | None:
    """Each layer's mean under q(h | x): the guide's, or the exact posterior's (PPCA, no guide); None for a guide
    that does not expose its layers (Pyro's autoguides in the comparison)."""
    if guide is not None:
        return [loc for loc, _ in guide.layers(x)] if hasattr(guide, "layers") else None
    if decoder.args.linear:
        return [ppca.posterior(x, decoder.ppca()).mean]
    return None


def _decode_from_top(decoder: Decoder, top: Tensor) -> Tensor:
    """E[x | h^1] with h^1 the layer means below h^L = ``top`` (each layer at its mean)."""
    h = top
    for l in reversed(range(len(decoder.layers))):
        h = decoder.layers[l](h)[0]
    return decoder.mean(h)


def _tile(ax, images: Tensor, side: int, rows: int, cols: int) -> None:
    grid = images.reshape(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    ax.imshow(grid.clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def pictures(x: Tensor, fits: dict[str, Decoder], guides: dict, labels: Tensor | None, seed: int) -> dict:
    """The pictures people expect of a VAE, as {PNG file name: matplotlib figure} (the runner writes them):

    * reconstructions.png: ten images (one per class when labels are known), and for each method
      E[x | h^1] at the mean of q(h^1 | x) (the exact posterior's for the PPCA fit);
    * samples.png: for each method, E[x | h^1] for ten draws h^L ~ N(0, I) (the same draws for every method),
      the layers between at their means;
    * latent_map.png: each guide's mean of q(h^L | x) for every point, coloured by label (the first two
      principal axes when K_L > 2);
    * latent_manifold.png (K_L = 2 only): E[x | h] over a grid of h^L at the N(0, I) quantiles 0.05..0.95.

    The image pictures need square images (D = side^2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().cpu()
    fits = {m: d for m, d in fits.items() if isinstance(d, Decoder)}
    side = math.isqrt(x.shape[1])
    square = side * side == x.shape[1]
    figures = {}
    if labels is not None and len(labels) == x.shape[0]:
        firsts = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)[:10]]
    else:
        firsts = list(range(min(10, x.shape[0])))
    pick = torch.tensor(firsts)
    means = {m: _posterior_layers(d, x, guides.get(m)) for m, d in fits.items()}
    if square and fits:
        rows = [("data", x[pick])] + [(m, d.mean(means[m][0][pick])) for m, d in fits.items() if means[m] is not None]
        fig, axes = plt.subplots(len(rows), 1, figsize=(0.6 * len(pick) + 1.5, 0.75 * len(rows) + 0.6), dpi=120, squeeze=False)
        for ax, (name, images) in zip(axes[:, 0], rows):
            _tile(ax, images.float(), side, 1, len(pick))
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        fig.suptitle("reconstructions: E[x | h1] at the mean of q(h1 | x)", fontsize=9)
        fig.tight_layout()
        figures["reconstructions.png"] = fig

        k_top = next(iter(fits.values())).args.latent_sizes[-1]
        draws = torch.randn(10, k_top, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        fig, axes = plt.subplots(len(fits), 1, figsize=(7.5, 0.75 * len(fits) + 0.6), dpi=120, squeeze=False)
        for ax, (name, d) in zip(axes[:, 0], fits.items()):
            _tile(ax, _decode_from_top(d, draws.to(x.dtype)).float(), side, 1, 10)
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        fig.suptitle("samples from the prior: E[x | h1] for h^L ~ N(0, I)", fontsize=9)
        fig.tight_layout()
        figures["samples.png"] = fig

    tops = {m: layers[-1] for m, layers in means.items() if layers is not None}
    if tops:
        fig, axes = plt.subplots(1, len(tops), figsize=(3.6 * len(tops), 3.6), dpi=120, squeeze=False)
        for ax, (name, h) in zip(axes[0], tops.items()):
            h = h.double()
            axis_names = ("h_1", "h_2")
            if h.shape[1] > 2:
                centred = h - h.mean(0)
                h = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
                axis_names = ("principal axis 1", "principal axis 2")
            elif h.shape[1] == 1:
                h = torch.cat([h, torch.zeros_like(h)], 1)
            colours = labels.numpy() if labels is not None and len(labels) == h.shape[0] else None
            colour = {"c": colours, "cmap": "tab10"} if colours is not None else {}
            points = ax.scatter(h[:, 0].numpy(), h[:, 1].numpy(), s=4, alpha=0.7, **colour)
            ax.set_title(f"{name}: mean of q(h{len(fits[name].args.latent_sizes)} | x)", fontsize=8)
            ax.set_xlabel(axis_names[0], fontsize=7)
            ax.set_ylabel(axis_names[1], fontsize=7)
            if colours is not None:
                fig.colorbar(points, ax=ax, ticks=range(10))
        fig.tight_layout()
        figures["latent_map.png"] = fig

    if square and fits:
        name, d = next(((m, fits[m]) for m in guides if m in fits), next(iter(fits.items())))
        if d.args.latent_sizes[-1] == 2:
            n = 12
            q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n, dtype=torch.float64))
            grid = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
            fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
            _tile(ax, _decode_from_top(d, grid.to(x.dtype)).float(), side, n, n)
            ax.set_title(f"{name}: E[x | h] over h^L at the N(0, I) quantiles 0.05..0.95", fontsize=8)
            fig.tight_layout()
            figures["latent_manifold.png"] = fig
    return figures
