"""Fits the polynomial behind `kip.kernels.stax._atan2_nonneg`: atan(u) = u P(u^2) on
|u| <= tan(pi/8), least squares on Chebyshev nodes in long double, refined three times.
Prints the coefficients and the worst relative error of float64 Horner evaluation.

    python tools/fit_atan_polynomial.py
"""

import numpy as np

DEGREE = 11


def fit(degree: int = DEGREE):
    ld = np.longdouble
    z_max = (np.sqrt(ld(2)) - 1) ** 2
    n = 4000
    k = np.arange(n, dtype=ld)
    z = np.concatenate([(1 - np.cos(np.pi * (k + ld(0.5)) / n)) / 2 * z_max, [ld(0)]])
    root = np.sqrt(z)
    target = np.where(z > 0, np.arctan(root) / np.where(z > 0, root, 1), ld(1))
    vander = np.vander(z / z_max, degree + 1, increasing=True)
    v64 = vander.astype(np.float64)
    c = np.zeros(degree + 1, dtype=ld)
    for _ in range(4):  # iterative refinement: float64 solves, long double residuals
        c = c + np.linalg.lstsq(v64, (target - vander @ c).astype(np.float64), rcond=None)[0].astype(ld)
    coeffs = (c / z_max ** np.arange(degree + 1, dtype=ld)).astype(np.float64)
    grid = np.linspace(0, float(z_max), 200001)
    p = np.zeros_like(grid)
    for cc in coeffs[::-1]:
        p = p * grid + cc
    u = np.sqrt(grid)
    truth = np.arctan(u.astype(ld))
    worst = float(np.max(np.abs((u * p - truth) / np.where(truth > 0, truth, 1))))
    return coeffs, worst


if __name__ == "__main__":
    coeffs, worst = fit()
    print("coefficients (z^0 .. z^%d):" % DEGREE)
    print(repr(coeffs.tolist()))
    print("worst relative error in float64:", worst)
