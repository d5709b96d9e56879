"""Fits the polynomials behind `kip.kernels.elementwise._arccos`: asin(y) = y P(y^2) on
y^2 <= 1/4, least squares on Chebyshev nodes in long double, refined four times, one
polynomial per dtype (the lowest degree whose Horner evaluation in that dtype is within
a few units in the last place). Prints the coefficients and the worst relative error.

    python tools/fit_asin_polynomial.py
"""

import numpy as np

Z_MAX = 0.25
DEGREES = {"float64": 13, "float32": 6}


def fit(degree: int, dtype=np.float64):
    ld = np.longdouble
    n = 4000
    k = np.arange(n, dtype=ld)
    z = np.concatenate([(1 - np.cos(np.pi * (k + ld(0.5)) / n)) / 2 * ld(Z_MAX), [ld(0)]])
    root = np.sqrt(z)
    target = np.where(z > 0, np.arcsin(root) / np.where(z > 0, root, 1), ld(1))
    vander = np.vander(z / ld(Z_MAX), degree + 1, increasing=True)
    v64 = vander.astype(np.float64)
    c = np.zeros(degree + 1, dtype=ld)
    for _ in range(4):  # iterative refinement: float64 solves, long double residuals
        c = c + np.linalg.lstsq(v64, (target - vander @ c).astype(np.float64), rcond=None)[0].astype(ld)
    coeffs = (c / ld(Z_MAX) ** np.arange(degree + 1, dtype=ld)).astype(np.float64)
    grid = np.linspace(0, Z_MAX, 200001).astype(dtype)
    p = np.zeros_like(grid)
    for cc in coeffs.astype(dtype)[::-1]:
        p = p * grid + cc
    y = np.sqrt(grid)
    truth = np.arcsin(y.astype(ld))
    worst = float(np.max(np.abs(((y * p).astype(ld) - truth) / np.where(truth > 0, truth, 1))))
    return coeffs, worst


if __name__ == "__main__":
    for name, degree in DEGREES.items():
        coeffs, worst = fit(degree, np.dtype(name).type)
        print(f"{name}: coefficients (z^0 .. z^{degree}):")
        print(repr(coeffs.tolist()))
        print(f"worst relative error of {name} Horner evaluation: {worst:.2e} (eps {np.finfo(name).eps:.1e})")
