"""Loss-curve laws, the schedule quantities that drive them, fitting, prediction and schedule search.

Step convention (as in :mod:`workbench.schedules` and :mod:`workbench.curves`): ``lrs[t]`` is the LR
of the (t+1)-th update, and the loss "at step s" is the loss after ``s+1`` updates, so it depends on
``lrs[0..s]``. Every per-step array here is indexed that way.

**Annealing law** (Tissue, Wang, Wang 2408.11029): ``L(s) = L0 + A*S1^(-alpha) - C*S2`` with

* ``S1(s) = sum_{i<=s} eta_i``, the cumulative LR area ("forward area"), and
* ``S2(s) = sum_{i<=s} m_i``, ``m_i = lam*m_{i-1} + (eta_{i-1} - eta_i)``, ``m_1 = 0``, the annealing
  area (momentum of LR drops; negative while the LR rises, so re-warming is covered).

During the initial warmup both are computed as if ``eta = eta_max`` (the paper's convention).
``lam`` (0.999 in the paper) is fixed or fitted (``fit(..., lam=None)``).

**Multi-power law** (Luo et al., ICLR 2025, 2503.12811), seven parameters
``L0, A, alpha, B, C, beta, gamma``::

    L(t) = L0 + A*(S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t)),  G(x) = 1 - (C*x + 1)^(-beta)

with ``t`` counted after the warmup of ``W`` steps, ``S1(t)`` the LR area after it, ``S_k(t)`` the
area of steps ``k..t``, ``eta_0`` the peak LR and ``S_W`` the warmup's LR area. Here ``S_W`` is the
actual area ``sum(lrs[:W])`` (``eta_max*(W-1)/2`` for the workbench's linear warmup, which starts at 0;
the paper writes ``eta_max*W/2``: half a peak step apart). An LR of exactly 0 in ``eta_k^(-gamma)``
is floored at ``1e-12`` of the peak, which gives the limits: ``G = 1`` once later steps add LR area,
``G = 0`` while none do (updates with LR 0 change nothing).

*How LD is evaluated.* Naively ``LD`` at every step is an O(T^2) double sum. Here the drops
``d_k = eta_{k-1} - eta_k`` are aggregated in a dyadic pyramid (aligned blocks of 1, 2, 4, ... steps)
that stores, per block, ``sum d_k``, ``sum d_k eta_k^-gamma`` and ``sum d_k eta_k^-gamma * (area
from k to the block's end)``, built bottom-up from local sums in O(T) per value of ``gamma`` (no
cancellation between large prefix sums). A requested step ``t`` sums over O(log(T)/eps) blocks:
single steps next to ``t``, and further away blocks at most ``eps = 0.1`` times their distance from
``t``, both in steps and in LR area, inside which the LR varies by at most ``eps`` of itself; each
block's ``G`` is taken at its drop-weighted mean argument (exact to first order: the error is
second order in ``eps``, ~1e-6 of the loss, tested against a brute-force O(T^2) sum; a step
schedule is exact). Blocks without an LR change (constant stretches) are skipped. Cost:
O(T + Q*log(T)/eps) for ``Q`` requested steps: ~2000 display points of a 100k-step cosine in
~35 ms on a 2-core CPU (all 100k steps: ~1.4 s; :meth:`FittedLaw.predictor` interpolates between
display steps), and a fit evaluates ~1e5 block terms per iteration for 3 curves x 500 points.

**Fitting** (:func:`fit`): curves with different schedules are fitted jointly by minimising the sum
of ``Huber_delta(log Lhat - log L)`` (``delta = 1e-3``) over their points after warmup (points
inside the warmup are not described by either law and are skipped; the count is in ``info``).
LRs are rescaled by the largest peak LR, so initial values scale with the data. Initialisation: a
grid over the non-linear parameters, each with the linear ones (``L0, A`` and ``C`` or ``B``)
solved by non-negative least squares on relative errors; the 3 best grid points and ``restarts``
seeded perturbations of the best are refined a little, and the best of them to convergence, by a
trust-region least-squares solver (scipy ``least_squares``, Huber loss, analytic Jacobian,
bounds). Deterministic given ``seed``. With two or more curves, early stopping (the number of
solver evaluations, from ``STOP_CANDIDATES``) is chosen by leave-one-curve-out validation: fit on
the other curves, score the mean relative error on the left-out one; the least-stopped candidate
within ``STOP_TOLERANCE`` (5%) of the best wins; all of it is in ``info["validation"]``. Points
that two curves share exactly (a two-stage run branched from the constant run) count once, and are
not scored when their curve is left out.

**Uncertainty**: a Laplace (Gauss-Newton) approximation of the parameter covariance from the
fit's residuals (``predict(..., band=True, method="laplace")``: the band of the law's mean, by the
delta method), and a calibrated band (``method="calibrated"``, the default when available): the
parameter uncertainty plus the law's relative error on held-out curves, the root-mean-square of the
leave-one-curve-out residuals (``info["calibration"]``), combined in log space so ``low > 0``.

**What a fit cannot tell** (:mod:`workbench.laws.diagnostics`): every fit reports parameters on a
bound, the Jacobian's condition number, strongly correlated pairs and the range of the
leave-one-curve-out fits in ``FittedLaw.identifiability``, and turns them into plain-language
``FittedLaw.warnings`` ("C and beta are not identified by these curves: add a run with a decay of
another length or shape"). ``FittedLaw.check_domain(schedule)`` lists reasons not to trust a
forecast (peak LR outside the fitted range, a run far longer than the fitted ones, a prediction below
0 or the fitted floor ``L0``, a band wider than the loss); :func:`optimize_schedule` refuses on them;
:func:`compare_schedules` ranks schedules and calls a difference resolved only when its interval
excludes 0 and every leave-one-curve-out fit agrees.

Modules: ``core`` (areas, input checks, metrics), ``annealing_law``, ``multipower_law`` (the fast LD
sum), ``evaluate`` (the laws as functions), ``fitting``, ``fitted`` (:class:`FittedLaw`),
``diagnostics``, ``compare``, ``search`` (schedule search).

Example:
    >>> import numpy as np
    >>> s1, s2 = areas(np.array([1.0, 1.0, 0.5, 0.5]), lam=0.5)
    >>> s1.tolist(), s2.tolist()
    ([1.0, 2.0, 2.5, 3.0], [0.0, 0.0, 0.5, 0.75])
    >>> from workbench import schedules
    >>> s = schedules.wsd(peak_lr=1e-3, total_steps=2000, warmup_steps=100, decay_fraction=0.2)
    >>> p = dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5)
    >>> y = multipower(s, **p)
    >>> bool(y[1599] > y[1999]), y.shape
    (True, (2000,))
"""
from __future__ import annotations

from __future__ import annotations

from .annealing_law import _Annealing, _AnnealStruct  # noqa: F401
from .core import (_ETA_FLOOR, _FORMAT, BLOCK_EPS, HUBER_DELTA, LAWS, _drops, _lr_input,  # noqa: F401
                   _query_steps, _warm_eta, areas, metrics)
from .compare import ScheduleComparison, compare_schedules  # noqa: F401
from .evaluate import _eval_params, _law, annealing, multipower  # noqa: F401
from .fitted import FittedLaw, _json_safe, load_fit  # noqa: F401
from .diagnostics import _decays  # noqa: F401
from .fitting import (STOP_CANDIDATES, STOP_TOLERANCE, _as_curves, _Data, _dedupe, _grid_starts,  # noqa: F401
                      _huber_cost, _laplace, _path_at, _Problem, _select_basis, _shared_prefix, _solve, _validate,
                      fit)
from .multipower_law import _CHUNK, _evaluate_chunked, _MPSchedule, _MPStruct, _MultiPower, _walk  # noqa: F401
from .search import _final_loss_grad, _free_form, optimize_schedule  # noqa: F401

# every name of the former single module ``workbench/laws.py`` (private helpers included) stays importable here

__all__ = ["areas", "annealing", "multipower", "LAWS", "fit", "FittedLaw", "load_fit", "optimize_schedule",
           "metrics", "compare_schedules", "ScheduleComparison"]
