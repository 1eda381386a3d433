"""Data-mixing laws fitted on a finished mixture sweep, the trade-off front they imply, and the next
weights to try.

A finished sweep holds, per point, the normalised mixture proportions r (``weight/<source>`` in
sweep.csv, summing to 1) and the final held-out loss of every source (``eval/<source>/loss``, also
``eval/<perplexity_name>/loss``) and, when benchmarks ran, ``bench/<task>/<metric>``. Each of those
columns is a *target*; one law is fitted per target:

- ``ye`` (Ye et al. 2024, "Data Mixing Laws", arXiv 2403.16952): ``L_i(r) = c_i + k_i * exp(sum_j t_ij r_j)``,
  fitted by nonlinear least squares (scipy.optimize.least_squares) from several starts (for a
  fixed t the best c, k are a linear solve, so every start begins at its own best c, k).
- ``linear`` (RegMix-style regression): ``L_i(r) = a_i + sum_j w_ij r_j``, ridge-penalised on w
  (``fit.ridge``).
- ``loglinear``: ``log L_i(r) = a_i + sum_j w_ij r_j`` (the ye law without the floor c_i).

Because the proportions sum to 1, only directions *within* the simplex are identifiable, and only
the ones the sweep varied: a sweep of the clinical weight alone moves r along one line. The law is
therefore fitted in the affine hull of the swept proportions (d = its dimension, at most
#sources - 1) and reported in the gauge ``sum_j t_ij = 0`` (resp. ``sum_j w_ij = 0``), directions
never swept carrying 0. Parameters per target: ye d + 2, linear and loglinear d + 1; a sweep with
fewer points is refused (MixingLawError naming both counts). Fit quality per target: R^2 and RMSE
on the points, and the leave-one-out RMSE (each point predicted by a law fitted without it;
reported as None when n - 1 points are too few for the parameters).

The front: candidate proportions (``fit.candidates`` Dirichlet samples of the simplex, restricted to
the swept hull's affine span, plus the swept points and the baseline) are scored under the fitted
law by the *domain loss* ``D(r) = sum w_i L_i(r)`` over ``fit.domain`` (e.g. biomedical and
clinical held-out loss; a ``bench/...`` column enters with a minus sign, higher being better) and
the *general loss* ``G(r)`` over ``fit.general`` (general-domain forgetting). The Pareto front is
the candidates no other candidate beats on both. The proposal is the candidate that

- ``fit.objective="constrained"``: minimises D subject to ``G <= G(baseline) + fit.max_general_increase``;
- ``fit.objective="weighted"``: minimises ``D + fit.general_weight * G``;

where the baseline is ``fit.baseline``: "base" (the base experiment's own mixture) or a point name.
Everything is written to ``fit.json`` / ``fit.md`` / ``fit.png`` in the sweep's workdir; with
``fit.run_proposal`` the sweep runs the proposal as its next point, ``points/proposal``, which is
never used to fit (so rerunning the sweep reproduces the same proposal) but is compared with its
prediction in fit.json.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares, linprog

from mellama_jax import fs
from mellama_jax.sweep.grid import Point
from mellama_jax.sweep.table import no_held_out

__all__ = ["LAWS", "OBJECTIVES", "PROPOSAL", "MixingLawError", "MixingLaw", "fit_law", "parse_terms",
           "read_table", "sweep_data", "propose", "fit_sweep", "check_fit_config", "proposal_points",
           "sweep_stage"]

LAWS = ("ye", "linear", "loglinear")
OBJECTIVES = ("constrained", "weighted")
PROPOSAL = "proposal"  # the point name of the proposed weights
_EXP_CLIP = 60.0       # exponents beyond this overflow float64 long before they mean anything
_FRONT_MAX = 200       # front points kept in fit.json


class MixingLawError(ValueError):
    """A sweep the law cannot be fitted on, or an objective it cannot satisfy."""


def n_params(law: str, dims: int) -> int:
    """Parameters per target in a hull of `dims` swept directions."""
    return dims + (2 if law == "ye" else 1)


def _affine_basis(weights: np.ndarray, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """(centre, M x d orthonormal basis) of the affine hull of the swept proportions."""
    centre = weights.mean(axis=0)
    if len(weights) < 2:
        return centre, np.zeros((weights.shape[1], 0))
    _, s, vt = np.linalg.svd(weights - centre, full_matrices=False)
    d = int(np.sum(s > tol * max(1.0, s[0] if s.size else 0.0)))
    return centre, vt[:d].T


def _ye_predict(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    return theta[0] + theta[1] * np.exp(np.clip(z @ theta[2:], -_EXP_CLIP, _EXP_CLIP))


def _ye_jac(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    e = np.exp(np.clip(z @ theta[2:], -_EXP_CLIP, _EXP_CLIP))
    return np.concatenate([np.ones((len(z), 1)), e[:, None], (theta[1] * e)[:, None] * z], axis=1)


def _ye_linear_ck(z: np.ndarray, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    e = np.exp(np.clip(z @ u, -_EXP_CLIP, _EXP_CLIP))
    ck, *_ = np.linalg.lstsq(np.stack([np.ones_like(e), e], axis=1), y, rcond=None)
    return np.concatenate([ck, u])


def _fit_ye(z: np.ndarray, y: np.ndarray, starts: int, rng: np.random.Generator,
            init: np.ndarray | None = None) -> np.ndarray:
    scale = 1.0 / np.maximum(z.std(axis=0), 1e-12)  # exponent changes of O(1) across the sweep
    x0s = [init] if init is not None else []
    x0s.append(_ye_linear_ck(z, y, np.zeros(z.shape[1]) + 1e-3 * scale))
    for _ in range(starts):
        x0s.append(_ye_linear_ck(z, y, rng.normal(0.0, 1.5, z.shape[1]) * scale))
    best, best_cost = None, math.inf
    for x0 in x0s:
        try:
            res = least_squares(lambda th: _ye_predict(th, z) - y, x0, jac=lambda th: _ye_jac(th, z),
                                method="lm", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=400)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(res.x)) and res.cost < best_cost:
            best, best_cost = res.x, res.cost
    if best is None:
        raise MixingLawError("the ye law did not converge from any start")
    return best


def _fit_linear(z: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    x = np.concatenate([np.ones((len(z), 1)), z], axis=1)
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    return np.linalg.lstsq(x.T @ x + penalty, x.T @ y, rcond=None)[0]


class MixingLaw:
    """One fitted law per target column over `sources`; `predict(r)` takes proportions (K x M)."""

    def __init__(self, law: str, sources: Sequence[str], centre: np.ndarray, basis: np.ndarray,
                 params: dict[str, np.ndarray]):
        self.law, self.sources, self.centre, self.basis, self.params = law, list(sources), centre, basis, params

    @property
    def dims(self) -> int:
        return self.basis.shape[1]

    def coords(self, r: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(r) - self.centre) @ self.basis

    def predict_target(self, target: str, r: np.ndarray) -> np.ndarray:
        return _predict(self.law, self.params[target], self.coords(r))

    def predict(self, r: np.ndarray) -> dict[str, np.ndarray]:
        return {t: self.predict_target(t, r) for t in self.params}

    def in_span(self, r: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Whether each r lies in the affine span the sweep varied (elsewhere the law is a projection)."""
        d = np.atleast_2d(r) - self.centre
        return np.abs(d - (d @ self.basis) @ self.basis.T).max(axis=1) <= tol

    def coefficients(self, target: str) -> dict[str, Any]:
        """The law in the proportions themselves, gauge sum_j t_j = 0 (sum_j w_j = 0)."""
        th = self.params[target]
        if self.law == "ye":
            t = self.basis @ th[2:]
            return {"c": float(th[0]), "k": float(th[1] * math.exp(-float(t @ self.centre))),
                    "t": dict(zip(self.sources, map(float, t)))}
        w = self.basis @ th[1:]
        return {"intercept": float(th[0] - w @ self.centre), "coef": dict(zip(self.sources, map(float, w)))}


def _predict(law: str, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    if law == "ye":
        return _ye_predict(theta, z)
    lin = theta[0] + z @ theta[1:]
    return np.exp(np.clip(lin, -_EXP_CLIP, _EXP_CLIP)) if law == "loglinear" else lin


def _fit_one(law: str, z: np.ndarray, y: np.ndarray, starts: int, seed: int, ridge: float,
             init: np.ndarray | None = None) -> np.ndarray:
    if law == "ye":
        return _fit_ye(z, y, starts, np.random.default_rng(seed), init)
    if law == "loglinear":
        return _fit_linear(z, np.log(y), ridge)
    return _fit_linear(z, y, ridge)


def fit_law(weights: np.ndarray, targets: Mapping[str, np.ndarray], sources: Sequence[str], law: str = "ye",
            starts: int = 8, seed: int = 0, ridge: float = 1e-6) -> tuple[MixingLaw, dict[str, dict]]:
    """Fits `law` per target on n points (weights: n x M proportions). Returns the law and, per
    target, its fit quality {n, params, r2, rmse, loo_rmse}."""
    if law not in LAWS:
        raise MixingLawError(f"fit.law={law!r}: expected one of {LAWS}")
    weights = np.asarray(weights, dtype=np.float64)
    n = len(weights)
    centre, basis = _affine_basis(weights)
    d = basis.shape[1]
    p = n_params(law, d)
    if d == 0:
        raise MixingLawError(f"the sweep's {n} points all have the same mixture proportions; nothing to fit")
    if n < p:
        raise MixingLawError(f"the sweep has {n} points but the {law} law has {p} parameters per target "
                             f"({d} swept mixture direction(s) + {p - d}); sweep at least {p} mixtures")
    z = (weights - centre) @ basis
    params, quality = {}, {}
    for target, y in targets.items():
        y = np.asarray(y, dtype=np.float64)
        if law == "loglinear" and np.any(y <= 0):
            raise MixingLawError(f"{target}: the loglinear law needs positive values")
        theta = _fit_one(law, z, y, starts, seed, ridge)
        params[target] = theta
        pred = _predict(law, theta, z)
        ss_res, ss_tot = float(np.sum((pred - y) ** 2)), float(np.sum((y - y.mean()) ** 2))
        loo = None
        if n - 1 >= p:
            errs = []
            for i in range(n):
                keep = np.arange(n) != i
                th_i = _fit_one(law, z[keep], y[keep], 0, seed + 1 + i, ridge, init=theta)  # from the full fit
                errs.append(float(_predict(law, th_i, z[i:i + 1])[0] - y[i]))
            loo = float(np.sqrt(np.mean(np.square(errs))))
        quality[target] = {"n": n, "params": p, "r2": (1.0 - ss_res / ss_tot) if ss_tot > 0 else None,
                           "rmse": math.sqrt(ss_res / n), "loo_rmse": loo}
    return MixingLaw(law, sources, centre, basis, params), quality


# ----------------------------------------------------------------------------------------------
# The sweep's table

def read_table(workdir: str) -> list[dict]:
    """sweep.csv's rows, numbers as floats (the CSV holds them at full precision)."""
    path = fs.join(workdir, "sweep.csv")
    if not fs.isfile(path):
        raise MixingLawError(f"{path} not found: run the sweep first")
    rows = []
    with fs.open(path, "r", newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v) if k != "point" and v != "" else (v if v != "" else None)
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows


def _is_target(col: str) -> bool:
    return (col.startswith("eval/") and col.endswith("/loss")) or col.startswith("bench/")


def sweep_data(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], np.ndarray, dict[str, np.ndarray]]:
    """(point names, sources, n x M proportions, {target column: n values}) of the grid points (the
    proposal excluded); targets missing at any point are dropped, and so are held-out losses that
    measured nothing (a source with no held-out examples: 0.0 or NaN in an older table)."""
    rows = [r for r in rows if r.get("point") != PROPOSAL]
    if not rows:
        raise MixingLawError("the sweep has no finished points")
    sources = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("weight/")})
    if len(sources) < 2:
        raise MixingLawError(f"the sweep's table has {len(sources)} weight/<source> columns; a mixing law "
                             "needs at least 2 sources")
    w = np.array([[float(r.get(f"weight/{s}") or 0.0) for s in sources] for r in rows])
    w = w / w.sum(axis=1, keepdims=True)
    cols = sorted({k for r in rows for k in r if _is_target(k)})
    targets = {c: np.array([float(r[c]) for r in rows]) for c in cols
               if all(isinstance(r.get(c), (int, float)) and math.isfinite(r[c]) for r in rows)
               and not (c.startswith("eval/") and any(no_held_out(r[c]) for r in rows))}
    if not targets:
        raise MixingLawError("the sweep's table has no eval/<source>/loss or bench/ column to fit")
    return [str(r["point"]) for r in rows], sources, w, targets


def parse_terms(spec: str) -> list[tuple[str, float]]:
    """`"biomedical,clinical:2"` -> [("eval/biomedical/loss", 1.0), ("eval/clinical/loss", 2.0)];
    a name with a '/' is a column of the table as it stands (e.g. `bench/pubmedqa/accuracy`)."""
    out = []
    for item in str(spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise MixingLawError(f"{item!r}: weight {weight!r} is not a number (name[:weight])") from None
        if not math.isfinite(w) or w < 0:
            raise MixingLawError(f"{item!r}: weight must be finite and >= 0")
        out.append((name.strip() if "/" in name else f"eval/{name.strip()}/loss", w))
    return out


def _score(terms: list[tuple[str, float]], preds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Lower is better: losses add, bench/ scores (higher is better) subtract."""
    total = 0.0
    for col, w in terms:
        total = total + (-w if col.startswith("bench/") else w) * preds[col]
    return np.asarray(total, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Front and proposal

def _candidates(law: MixingLaw, count: int, seed: int, extra: np.ndarray) -> np.ndarray:
    """Dirichlet(1) samples of the simplex moved into the swept span (kept when still >= 0), the
    exact segment when the span is a line, the vertices when it is the whole simplex, and `extra`."""
    m = len(law.sources)
    rng = np.random.default_rng(seed)
    raw = rng.dirichlet(np.ones(m), size=count)
    parts = [extra]
    if law.dims == m - 1:
        parts += [raw, np.eye(m)]
    else:
        proj = law.centre + ((raw - law.centre) @ law.basis) @ law.basis.T
        parts.append(proj[proj.min(axis=1) >= -1e-12])
        if law.dims == 1:  # the feasible segment r = centre + s b, r >= 0
            b = law.basis[:, 0]
            lo = max((-law.centre[j] / b[j] for j in range(m) if b[j] > 1e-15), default=-1.0)
            hi = min((-law.centre[j] / b[j] for j in range(m) if b[j] < -1e-15), default=1.0)
            parts.append(law.centre + np.linspace(lo, hi, max(count, 2))[:, None] * b)
    cand = np.clip(np.concatenate(parts), 0.0, None)
    return cand / cand.sum(axis=1, keepdims=True)


def _pareto(dom: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """Indices of the candidates no other beats on both (sorted by general loss)."""
    order = np.lexsort((dom, gen))
    keep, best = [], math.inf
    for i in order:
        if dom[i] < best - 1e-15:
            keep.append(i)
            best = dom[i]
    return np.array(keep, dtype=int)


def _inside_hull(points: np.ndarray, r: np.ndarray) -> bool:
    """Whether r is a convex combination of the swept points (else the proposal extrapolates)."""
    n = len(points)
    res = linprog(np.zeros(n), A_eq=np.vstack([points.T, np.ones(n)]), b_eq=np.append(r, 1.0),
                  bounds=[(0, None)] * n, method="highs")
    return bool(res.status == 0)


def propose(law: MixingLaw, weights: np.ndarray, names: Sequence[str], domain: list[tuple[str, float]],
            general: list[tuple[str, float]], objective: str = "constrained", max_general_increase: float = 0.0,
            general_weight: float = 1.0, baseline: np.ndarray | None = None, candidates: int = 20000,
            seed: int = 0) -> dict[str, Any]:
    """The front and the proposed proportions under `law` (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise MixingLawError(f"fit.objective={objective!r}: expected one of {OBJECTIVES}")
    for col, _ in domain + general:
        if col not in law.params:
            raise MixingLawError(f"fit: {col!r} is not a column of the sweep's table "
                                 f"(fitted: {', '.join(sorted(law.params))})")
    if not domain or not general:
        raise MixingLawError("fit.domain and fit.general must each name at least one target")
    baseline = np.asarray(weights.mean(axis=0) if baseline is None else baseline, dtype=np.float64)
    extra = [weights]
    base_in = law.centre + ((baseline - law.centre) @ law.basis) @ law.basis.T
    if base_in.min() >= -1e-12:
        extra.append(base_in[None])
    cand = _candidates(law, candidates, seed, np.concatenate(extra))
    preds = law.predict(cand)
    dom, gen = _score(domain, preds), _score(general, preds)
    base_preds = law.predict(baseline)
    base_dom, base_gen = float(_score(domain, base_preds)[0]), float(_score(general, base_preds)[0])
    if objective == "constrained":
        limit = base_gen + max_general_increase
        feasible = gen <= limit + 1e-12
        if not feasible.any():
            raise MixingLawError(f"no candidate keeps the general loss <= {limit:.6g} under the fitted law")
        value = np.where(feasible, dom, np.inf)
    else:
        limit = None
        value = dom + general_weight * gen
    best = int(np.argmin(value))
    r = cand[best]
    swept_preds = law.predict(weights)
    swept_dom, swept_gen = _score(domain, swept_preds), _score(general, swept_preds)
    swept_value = (np.where(swept_gen <= limit + 1e-12, swept_dom, np.inf) if objective == "constrained"
                   else swept_dom + general_weight * swept_gen)
    front = _pareto(dom, gen)
    if len(front) > _FRONT_MAX:
        front = front[np.linspace(0, len(front) - 1, _FRONT_MAX).round().astype(int)]
    src = law.sources
    return {
        "objective": objective, "limit_general": limit,
        "weights": dict(zip(src, map(float, r))),
        "predicted": {"domain": float(dom[best]), "general": float(gen[best]), "objective": float(value[best]),
                      **{t: float(v[best]) for t, v in preds.items()}},
        "baseline": {"weights": dict(zip(src, map(float, baseline))), "domain": base_dom, "general": base_gen,
                     "in_swept_span": bool(law.in_span(baseline)[0])},
        "inside_swept_hull": _inside_hull(weights, r),
        "swept": [{"point": n, "domain": float(a), "general": float(b), "objective": float(v)}
                  for n, a, b, v in zip(names, swept_dom, swept_gen, swept_value)],
        "front": [{"weights": dict(zip(src, map(float, cand[i]))), "domain": float(dom[i]), "general": float(gen[i])}
                  for i in front],
        "_candidates": (cand, dom, gen),
    }


# ----------------------------------------------------------------------------------------------
# The sweep stage

def check_fit_config(fit: Any) -> None:
    """config.fit checked before any point runs (a typo must not wait for the last point)."""
    if fit is None or fit.law == "none":
        return
    if fit.law not in LAWS:
        raise MixingLawError(f"config.fit.law={fit.law!r}: expected one of {LAWS} or 'none'")
    if fit.objective not in OBJECTIVES:
        raise MixingLawError(f"config.fit.objective={fit.objective!r}: expected one of {OBJECTIVES}")
    for key in ("domain", "general"):
        if not parse_terms(fit[key]):
            raise MixingLawError(f"config.fit.{key} is empty: name at least one source (or table column)")


def fit_sweep(workdir: str, fit: Any, base_weights: Mapping[str, float] | None = None,
              rows: Sequence[Mapping[str, Any]] | None = None, plot: bool = True,
              out_dir: str | None = None) -> dict[str, Any]:
    """Fits config.fit's law on a finished sweep's table (rows, else `<workdir>/sweep.csv`) and writes
    fit.json, fit.md and (plot) fit.png into `out_dir` (default: `workdir`). `base_weights` (the
    base experiment's data.mixture) is the baseline when fit.baseline == "base"."""
    out_dir = out_dir or workdir
    check_fit_config(fit)
    rows = list(read_table(workdir) if rows is None else rows)
    names, sources, weights, targets = sweep_data(rows)
    law, quality = fit_law(weights, targets, sources, fit.law, int(fit.starts), int(fit.seed), float(fit.ridge))
    if fit.baseline == "base":
        if base_weights is None:
            raise MixingLawError("fit.baseline='base' needs the base experiment's mixture")
        base = np.array([float(base_weights.get(s, 0.0)) for s in sources])
        baseline_name = "base mixture"
    elif fit.baseline in names:
        base = weights[names.index(fit.baseline)]
        baseline_name = f"point {fit.baseline}"
    else:
        raise MixingLawError(f"config.fit.baseline={fit.baseline!r}: expected 'base' or one of the points "
                             f"({', '.join(names)})")
    if base.sum() <= 0:
        raise MixingLawError("the baseline mixture has no positive weight")
    domain, general = parse_terms(fit.domain), parse_terms(fit.general)
    prop = propose(law, weights, names, domain, general, fit.objective, float(fit.max_general_increase),
                   float(fit.general_weight), base / base.sum(), int(fit.candidates), int(fit.seed))
    cand = prop.pop("_candidates")
    prop["baseline"]["name"] = baseline_name
    observed = next((r for r in rows if r.get("point") == PROPOSAL), None)
    if observed is not None:
        prop["observed"] = {t: observed.get(t) for t in targets}
        prop["observed"]["domain"] = float(_score(domain, {t: np.array(observed.get(t)) for t, _ in domain}))
        prop["observed"]["general"] = float(_score(general, {t: np.array(observed.get(t)) for t, _ in general}))
    out = {
        "law": fit.law, "sources": sources, "swept_dims": law.dims,
        "points": [{"point": n, "weights": dict(zip(sources, map(float, w))),
                    **{t: float(v[i]) for t, v in targets.items()}} for i, (n, w) in enumerate(zip(names, weights))],
        "targets": {t: {"quality": quality[t], "coefficients": law.coefficients(t)} for t in targets},
        "domain": [{"column": c, "weight": w} for c, w in domain],
        "general": [{"column": c, "weight": w} for c, w in general],
        "max_general_increase": float(fit.max_general_increase), "general_weight": float(fit.general_weight),
        "proposal": prop,
    }
    fs.makedirs(out_dir)
    fs.write_text(fs.join(out_dir, "fit.json"), json.dumps(out, indent=1))  # whole or not at all
    _write_md(out, fs.join(out_dir, "fit.md"))
    if plot:
        out["plot"] = _plot(out, law, weights, targets, cand, os.path.join(out_dir, "fit.png"))
    return out


def _write_md(fit: dict, path: str) -> None:
    p = fit["proposal"]
    lines = [f"# Mixing-law fit ({fit['law']}, {len(fit['points'])} points, {fit['swept_dims']} swept directions)",
             "", "| target | R^2 | RMSE | leave-one-out RMSE | params |", "|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for t, info in fit["targets"].items():
        q = info["quality"]
        lines.append(f"| {t} | {fmt(q['r2'])} | {fmt(q['rmse'])} | {fmt(q['loo_rmse'])} | {q['params']} |")
    rule = (f"minimise domain loss with general loss <= {p['limit_general']:.4f} "
            f"({p['baseline']['name']} + {fit['max_general_increase']:g})" if p["objective"] == "constrained"
            else f"minimise domain + {fit['general_weight']:g} x general loss")
    lines += ["", f"## Proposal: {rule}", "", "| | " + " | ".join(fit["sources"]) + " | domain loss | general loss |",
              "|---|" + "---|" * (len(fit["sources"]) + 2)]
    for label, rec, pred in (("proposal", p["weights"], p["predicted"]),
                             (p["baseline"]["name"], p["baseline"]["weights"], p["baseline"])):
        lines.append(f"| {label} | " + " | ".join(f"{rec[s]:.4f}" for s in fit["sources"])
                     + f" | {pred['domain']:.4f} | {pred['general']:.4f} |")
    if "observed" in p:
        lines.append("| proposal (observed) | " + " | ".join("" for _ in fit["sources"])
                     + f" | {p['observed']['domain']:.4f} | {p['observed']['general']:.4f} |")
    lines += ["", f"Domain and general losses of the proposal and baseline are the fitted law's predictions"
              f"{'' if p['inside_swept_hull'] else '; the proposal lies outside the swept points (extrapolated)'}."]
    fs.write_text(path, "\n".join(lines) + "\n")


def _plot(fit: dict, law: MixingLaw, weights: np.ndarray, targets: dict, cand: tuple, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    p = fit["proposal"]
    _, dom, gen = cand
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.scatter(gen, dom, s=2, color="0.8", label="candidates (fitted law)")
    front = np.array([[f["general"], f["domain"]] for f in p["front"]])
    ax.plot(front[:, 0], front[:, 1], color="C0", label="Pareto front")
    ax.scatter([s["general"] for s in p["swept"]], [s["domain"] for s in p["swept"]], color="C1", marker="o",
               label="swept points (fitted)")
    ax.scatter([p["baseline"]["general"]], [p["baseline"]["domain"]], color="k", marker="s", label="baseline")
    ax.scatter([p["predicted"]["general"]], [p["predicted"]["domain"]], color="C3", marker="*", s=150,
               label="proposal")
    if "observed" in p:
        ax.scatter([p["observed"]["general"]], [p["observed"]["domain"]], color="C3", marker="x", s=80,
                   label="proposal (observed)")
    if p["limit_general"] is not None:
        ax.axvline(p["limit_general"], color="C3", ls=":", lw=1)
    ax.set_xlabel("general loss (forgetting)")
    ax.set_ylabel("domain loss")
    ax.set_title("domain gain vs general forgetting")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for i, (t, y) in enumerate(targets.items()):
        bx.scatter(y, law.predict_target(t, weights), s=18, color=f"C{i}", label=t)
    lo = min(float(np.min(y)) for y in targets.values())
    hi = max(float(np.max(y)) for y in targets.values())
    bx.plot([lo, hi], [lo, hi], color="0.5", lw=1)
    bx.set_xlabel("observed")
    bx.set_ylabel(f"fitted ({fit['law']} law)")
    bx.set_title("fit quality")
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def proposal_points(config: Any, workdir: str) -> list[Point]:
    """[the proposal point] when config.fit.run_proposal and an earlier fit in `workdir` proposed
    one (the sweep re-plans after fitting), else []. Its values set every source's weight."""
    fit = config.get("fit")
    path = fs.join(workdir, "fit.json")
    if fit is None or fit.law == "none" or not fit.run_proposal or not fs.isfile(path):
        return []
    weights = json.loads(fs.read_text(path))["proposal"]["weights"]
    return [Point(PROPOSAL, tuple((f"data.mixture.{s}", float(w), repr(float(w))) for s, w in weights.items()))]


def sweep_stage(config: Any, workdir: str, entries: Sequence[dict], rows: Sequence[dict]) -> dict | None:
    """After the table: fit when every grid point is finished. Returns fit_sweep's result (with
    "rerun": True when the proposal should now run as the next point) or None when there is no fit."""
    fit = config.get("fit")
    if fit is None or fit.law == "none":
        return None
    grid = [e for e in entries if e["point"].name != PROPOSAL]
    done = {r["point"] for r in rows}
    if not all(e["point"].name in done for e in grid):
        print(f"sweep: mixing-law fit waits for all {len(grid)} points", flush=True)
        return None
    others = [k for k, _, _ in grid[0]["point"].values if not k.startswith("data.mixture.")]
    try:
        if others:
            raise MixingLawError(f"config.grid also sweeps {', '.join(others)}; the law fits loss against the "
                                 "mixture alone")
        result = fit_sweep(workdir, fit, dict(config.base.data.mixture), rows, plot=bool(config.plot))
    except MixingLawError as err:
        if fit.run_proposal:
            raise
        print(f"sweep: no mixing-law fit ({err}); --config.fit.law=none turns the fit off", flush=True)
        return None
    prop = result["proposal"]
    print(f"sweep: {fit.law} law fitted (fit.md); proposal "
          + ", ".join(f"{s}={w:.4f}" for s, w in prop["weights"].items()), flush=True)
    if fit.run_proposal:
        planned = next((e["point"] for e in entries if e["point"].name == PROPOSAL), None)
        if planned is None:
            result["rerun"] = True
        else:
            old = {k.split(".", 2)[2]: v for k, v, _ in planned.values}
            if any(abs(old.get(s, 0.0) - w) > 1e-12 for s, w in prop["weights"].items()):
                raise MixingLawError(f"{workdir}/points/{PROPOSAL} holds an earlier fit's proposal {old}; this fit "
                                     f"proposes {prop['weights']}: move that point away to run the new one")
    return result
