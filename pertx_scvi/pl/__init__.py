"""Plotting (matplotlib, scanpy style): each function takes data, returns the figure and
writes it with ``save=path``; ``show=True`` calls :func:`matplotlib.pyplot.show`.

* :func:`metric_bars`: mean and 95 % interval of each metric per method
  (from :func:`pertx_scvi.metrics.summarize`).
* :func:`effect_scatter`: predicted versus observed Δ per perturbation.
* :func:`de_heatmap`: observed and predicted Δ on each perturbation's top DE genes.
* :func:`loss_curves`: training and validation losses from ``model.history``.
* :func:`umap`: UMAP of the PertTX cell embedding (``X_pertx``).
* :func:`virtual_screen`: best-ranked candidates of
  :meth:`PertTX.virtual_screen <pertx_scvi.PertTX.virtual_screen>` with their intervals
  (returns the axes).
"""

from ._effects import de_heatmap, effect_scatter
from ._embedding import umap
from ._screen import virtual_screen
from ._summary import metric_bars
from ._training import loss_curves

__all__ = ["de_heatmap", "effect_scatter", "loss_curves", "metric_bars", "umap", "virtual_screen"]
