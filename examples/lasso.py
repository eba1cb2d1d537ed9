"""Lasso on scikit-learn's diabetes data: jgd's ISTA and FISTA against
sklearn.linear_model.Lasso (same objective: (1/2n)‖y − Xw‖² + α‖w‖₁), with the
objective gap per iteration.

    python examples/lasso.py [--steps 3000] [--alpha 0.003] [--smoke]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso
from sklearn.preprocessing import PolynomialFeatures

import jgd


def main(steps, alpha, plot_path="lasso.png"):
    X, y = load_diabetes(return_X_y=True)
    X = PolynomialFeatures(2, include_bias=False).fit_transform((X - X.mean(0)) / X.std(0))
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    n = len(y)
    sk = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X.astype(np.float64), y)

    def objective(w):
        r = X.astype(np.float64) @ np.asarray(w, np.float64) - y
        return 0.5 * np.mean(r * r) + alpha * np.abs(w).sum()

    f_star = objective(sk.coef_)
    L = float(np.linalg.eigvalsh(X.T.astype(np.float64) @ X / n).max())

    def smooth(w):
        r = X @ w - y
        return 0.5 * jnp.mean(r * r)

    gaps = {}
    for name, accelerated in (("ISTA", False), ("FISTA", True)):
        opt = jgd.proximal_gradient(1.0 / L, prox=jgd.prox.l1(alpha), accelerated=accelerated)

        def body(carry, _):
            w, state = carry
            updates, state = opt.update(jax.grad(smooth)(w), state, w)
            return (optax.apply_updates(w, updates), state), state.iterate

        w0 = jnp.zeros(X.shape[1], jnp.float32)
        (_, state), iterates = jax.jit(lambda w: jax.lax.scan(body, (w, opt.init(w)), None, length=steps))(w0)
        gaps[name] = np.array([objective(w) for w in np.asarray(iterates)]) - f_star
        coef_err = np.max(np.abs(np.asarray(state.iterate) - sk.coef_))
        print(f"{name:<6} final gap {gaps[name][-1]:.2e}   max |w - w_sklearn| {coef_err:.2e}   "
              f"nonzeros {int(np.sum(np.asarray(state.iterate) != 0))} (sklearn {int(np.sum(sk.coef_ != 0))})")
    print("\niteration   ISTA gap    FISTA gap")
    for k in [1, 10, 30, 100, 300, 1000, 3000]:
        if k <= steps:
            print(f"{k:>9}   {gaps['ISTA'][k - 1]:.2e}   {gaps['FISTA'][k - 1]:.2e}")
    plot_gaps(gaps, plot_path)
    print(f"wrote {plot_path}")


def plot_gaps(gaps, path):
    """The objective gap against the iteration, on log-log axes, with FISTA's O(1/k²) and ISTA's O(1/k) rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    k = np.arange(1, len(gaps["ISTA"]) + 1)
    for name, gap in gaps.items():
        ax.loglog(k, np.maximum(gap, 1e-16), label=name)
    ax.loglog(k, gaps["ISTA"][0] / k, "k:", lw=0.8, label="O(1/k)")
    ax.loglog(k, gaps["FISTA"][0] / k ** 2, "k--", lw=0.8, label="O(1/k²)")
    ax.set(xlabel="iteration k", ylabel="objective gap F(x_k) − F(x*) (sklearn's Lasso as x*)",
           title="Lasso on diabetes (degree-2 features): ISTA vs FISTA")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--alpha", type=float, default=0.003)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(30 if args.smoke else args.steps, args.alpha)
