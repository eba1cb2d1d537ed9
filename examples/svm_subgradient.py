"""A linear SVM (hinge loss + L2) on scikit-learn's breast-cancer data by the subgradient
method, comparing its step rules; reports each rule's best iterate and test accuracy.

    python examples/svm_subgradient.py [--steps 3000] [--smoke]
"""

import argparse

import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import jgd

LAMBDA = 1e-2


def main(steps):
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    X = np.hstack([X, np.ones((len(X), 1))]).astype(np.float32)
    y = np.where(y == 1, 1.0, -1.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

    def objective(w):
        return jnp.mean(jnp.maximum(0.0, 1.0 - y_train * (X_train @ w))) + 0.5 * LAMBDA * jnp.sum(w * w)

    w0 = jnp.zeros(X.shape[1], jnp.float32)
    # A reference optimum for Polyak's step: the best value any rule finds with a long run.
    reference = jgd.minimize(objective, w0, jgd.subgradient(0.5, "sqrt"), steps=max(steps * 5, 100))
    f_star = float(reference.best_loss)
    rules = {
        "constant": jgd.subgradient(0.01, "constant"),
        "length": jgd.subgradient(0.01, "length"),
        "sqrt": jgd.subgradient(0.5, "sqrt"),
        "harmonic": jgd.subgradient(5.0, "harmonic"),
        "polyak": jgd.subgradient(1.0, "polyak", f_star=f_star - 1e-3),
    }
    print(f"{'rule':<10} {'last loss':>10} {'best loss':>10} {'test acc':>9}")
    for name, opt in rules.items():
        r = jgd.minimize(objective, w0, opt, steps=steps)
        last = float(r.losses[int(r.num_steps) - 1])
        accuracy = float(np.mean(np.sign(X_test @ np.asarray(r.best_params)) == y_test))
        print(f"{name:<10} {last:>10.5f} {float(r.best_loss):>10.5f} {accuracy:>9.3f}")
    print(f"(reference best value from a {max(steps * 5, 100)}-step 1/sqrt(t) run: {f_star:.5f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(30 if args.smoke else args.steps)
