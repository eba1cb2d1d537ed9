"""Least-squares linear regression on scikit-learn's diabetes data by full-batch gradient
descent with every smooth jgd variant, next to the closed-form optimum (numpy lstsq).

    python examples/linear_regression.py [--steps 2000] [--smoke]
"""

import argparse

import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes

import jgd

VARIANTS = {
    "sgd": jgd.sgd(0.1),
    "momentum": jgd.momentum(0.05, beta=0.9),
    "nesterov": jgd.nesterov(0.05, beta=0.9),
    "adagrad": jgd.adagrad(0.5),
    "rmsprop": jgd.rmsprop(0.01),
    "adam": jgd.adam(0.05),
    "adamw": jgd.adamw(0.05, weight_decay=1e-4),
}


def main(steps: int) -> dict:
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    X = np.hstack([X, np.ones((len(X), 1))]).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    w_star = np.linalg.lstsq(X.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    optimum = 0.5 * np.mean((X @ w_star - y) ** 2)

    def loss(w):
        r = X @ w - y
        return 0.5 * jnp.mean(r * r)

    print(f"{'variant':<10} {'final loss':>12} {'gap to lstsq':>14}")
    finals = {}
    for name, opt in VARIANTS.items():
        result = jgd.minimize(loss, jnp.zeros(X.shape[1], jnp.float32), opt, steps=steps)
        finals[name] = float(loss(result.params))
        print(f"{name:<10} {finals[name]:>12.6f} {finals[name] - optimum:>14.2e}")
    print(f"{'lstsq':<10} {optimum:>12.6f}")
    return finals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    main(20 if args.smoke else args.steps)
