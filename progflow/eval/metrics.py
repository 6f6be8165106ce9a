"""Sample-quality metrics on feature vectors.

All functions take numpy arrays; features are ``(N, D)`` (one row per image),
converted to float64 internally.

* :func:`frechet_distance` -- the Frechet distance between two Gaussians
  ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (FID when the features are
  Inception pool3; here usually our Fashion-MNIST classifier's 128-d features).
* :func:`feature_stats` -- mean ``(D,)`` and unbiased covariance ``(D, D)``.
* :func:`precision_recall` -- improved precision/recall of Kynkaanniemi et al. (2019):
  each set's manifold is the union of balls around its points with radius the distance
  to the point's k-th nearest neighbour within the set; precision is the fraction of
  fake points inside the real manifold, recall the fraction of real points inside the
  fake manifold. Computed in row chunks so 10k x 10k never materialises at once.
* :func:`density_coverage` -- density and coverage of Naeem et al. (2020) on the real
  set's k-NN balls: density counts how many real balls hold each fake point (``/ k``,
  about 1 when the sets match), coverage is the fraction of real balls holding at least
  one fake point. Unlike precision/recall, outliers in the fake set do not inflate either,
  and a collapsed fake set (every sample the same image) scores low coverage.
* :func:`class_accuracy` -- top-1 agreement of logits ``(N, K)`` with labels ``(N,)``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from ..errors import ProgflowError

__all__ = ["frechet_distance", "feature_stats", "precision_recall", "density_coverage", "class_accuracy"]

# Elements of one chunk of the pairwise distance matrix (float64: 8 bytes each).
_CHUNK_ELEMS = 8_000_000


def feature_stats(feats: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` features -> (mean ``(D,)``, covariance ``(D, D)``, ``ddof=1``), float64.

    Needs ``N >= 2``. ``weights`` ``(N,)`` (non-negative) weigh the rows (``np.cov``'s
    ``aweights``), e.g. to give a reference set another class mix.
    """
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ProgflowError(f"need at least 2 samples for feature statistics, got {x.shape[0]}")
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        return np.average(x, axis=0, weights=w), np.cov(x, rowvar=False, aweights=w).reshape(x.shape[1], x.shape[1])
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``mu`` are ``(D,)``, ``sigma`` ``(D, D)`` symmetric PSD. The matrix square root is
    ``scipy.linalg.sqrtm(sigma1 @ sigma2)``; if it is not finite, ``eps * I`` is added to
    both covariances and it is recomputed. The imaginary part (numerical noise for PSD
    inputs) is discarded, and the result is clamped at ``0`` (it can come out as a tiny
    negative number for identical inputs).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected (e.g. dead ReLU features)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    if not np.isfinite(fd):
        raise ProgflowError("Frechet distance is not finite (features contain NaN/inf?)")
    return max(fd, 0.0)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _pairwise_sq(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(len(a), len(b))``, clipped at 0."""
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


def _kth_nn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row of ``x`` to its k-th nearest other row ``(N,)``."""
    n = x.shape[0]
    sq = _sq_norms(x)
    chunk = max(1, _CHUNK_ELEMS // max(n, 1))
    radii = np.empty(n)
    for i in range(0, n, chunk):
        d2 = _pairwise_sq(x[i : i + chunk], sq[i : i + chunk], x, sq)
        # column 0 after partition is the point itself (distance 0), so index k is the k-th neighbour
        radii[i : i + chunk] = np.partition(d2, k, axis=1)[:, k]
    return radii


def _coverage(queries: np.ndarray, points: np.ndarray, radii2: np.ndarray) -> float:
    """Fraction of ``queries`` within ``sqrt(radii2[j])`` of some ``points[j]``."""
    return int(np.count_nonzero(_ball_counts(queries, points, radii2)[0])) / queries.shape[0]


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN manifolds.

    ``real_feats`` ``(M, D)``, ``fake_feats`` ``(N, D)``; both sets need more than ``k``
    points. Returns ``(precision, recall)`` in ``[0, 1]``. Memory is bounded by chunking
    the pairwise distances to about 64 MB at a time.
    """
    real = np.asarray(real_feats, dtype=np.float64)
    fake = np.asarray(fake_feats, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs (M, D) and (N, D) features, got {real.shape} and {fake.shape}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ProgflowError(
            f"precision/recall with k={k} needs more than {k} samples per set, got {real.shape[0]} real and {fake.shape[0]} fake"
        )
    real_r = _kth_nn_radii(real, k)
    fake_r = _kth_nn_radii(fake, k)
    precision = _coverage(fake, real, real_r)
    recall = _coverage(real, fake, fake_r)
    return float(precision), float(recall)


def _ball_counts(queries: np.ndarray, points: np.ndarray, radii2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every query, how many balls ``(points[j], sqrt(radii2[j]))`` hold it ``(len(queries),)``;
    and for every point, whether its ball holds some query ``(len(points),)`` bool."""
    q_sq, p_sq = _sq_norms(queries), _sq_norms(points)
    # tolerance for rounding in the |a|^2 + |b|^2 - 2ab expansion
    tol = 1e-9 * max(float(q_sq.max(initial=0.0)), float(p_sq.max(initial=0.0)), 1e-30)
    thresh = radii2[None, :] + tol
    chunk = max(1, _CHUNK_ELEMS // max(points.shape[0], 1))
    counts, hit = np.empty(queries.shape[0], dtype=np.int64), np.zeros(points.shape[0], dtype=bool)
    for i in range(0, queries.shape[0], chunk):
        inside = _pairwise_sq(queries[i : i + chunk], q_sq[i : i + chunk], points, p_sq) <= thresh
        counts[i : i + chunk] = inside.sum(axis=1)
        hit |= inside.any(axis=0)
    return counts, hit


def density_coverage(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al., 2020, eq. 5-6) with the real set's k-NN balls.

    With ``B_i`` the ball around real point ``X_i`` of radius its distance to its k-th nearest
    other real point: ``density = 1/(k M) sum_j #{i : Y_j in B_i}`` over the ``M`` fake
    points ``Y_j`` (unbounded; 1 for matching sets), ``coverage = 1/N #{i : some Y_j in B_i}``.
    ``k = 5`` as in the paper. The real set needs more than ``k`` points.

    >>> real = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> density_coverage(real, np.array([[0.5], [10.0]]), k=1)
    (1.0, 0.5)
    """
    real = np.asarray(real_feats, dtype=np.float64)
    fake = np.asarray(fake_feats, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"density_coverage needs (N, D) and (M, D) features, got {real.shape} and {fake.shape}")
    if real.shape[0] <= k or fake.shape[0] == 0:
        raise ProgflowError(f"density/coverage with k={k} needs more than {k} real points and some fake ones, got "
                            f"{real.shape[0]} real and {fake.shape[0]} fake")
    counts, hit = _ball_counts(fake, real, _kth_nn_radii(real, k))
    return float(counts.sum() / (k * fake.shape[0])), float(hit.mean())


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows where ``argmax(logits[i]) == labels[i]``; ``(N, K)``, ``(N,)``."""
    lg = np.asarray(logits)
    lb = np.asarray(labels).reshape(-1)
    if lg.ndim != 2 or lg.shape[0] != lb.shape[0]:
        raise ValueError(f"class_accuracy needs logits (N, K) and labels (N,), got {lg.shape} and {lb.shape}")
    if lb.shape[0] == 0:
        raise ProgflowError("class_accuracy of an empty set")
    return float(np.mean(lg.argmax(axis=1) == lb))
