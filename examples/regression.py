"""Predict diabetes progression with dlcore's Regressor (an MLP on standardised inputs and targets).

Prints the held-out R^2 beside scikit-learn's LinearRegression on the same split and saves the learning
curves to examples/out/regression.png. Seconds.

    python examples/regression.py
"""
import os

from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from dlcore.tasks import Regressor

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

if __name__ == "__main__":
    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=42)
    reg = Regressor(random_state=0).fit(Xtr, ytr)
    print(f"        Regressor: R^2 {reg.score(Xte, yte):.3f} ({reg.n_iter_} epochs, {reg.history_.seconds:.1f} s)")
    print(f" LinearRegression: R^2 {LinearRegression().fit(Xtr, ytr).score(Xte, yte):.3f}")
    os.makedirs(OUT, exist_ok=True)
    print("curves:", reg.history_.plot(os.path.join(OUT, "regression.png"), title="Regressor on diabetes"))
