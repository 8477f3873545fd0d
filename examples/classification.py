"""Classify handwritten digits with dlcore's Classifier (an MLP with softmax outputs).

Prints the held-out accuracy beside scikit-learn's MLPClassifier and LogisticRegression on the same split
and saves the learning curves to examples/out/classification.png. Under a minute.

    python examples/classification.py
"""
import os

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from dlcore.tasks import Classifier

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = Classifier(random_state=0).fit(Xtr, ytr)
    print(f"         Classifier: accuracy {clf.score(Xte, yte):.4f} ({clf.n_iter_} epochs, "
          f"{clf.history_.seconds:.1f} s)")
    print(f"      MLPClassifier: accuracy {MLPClassifier(random_state=0, max_iter=500).fit(Xtr, ytr).score(Xte, yte):.4f}")
    print(f" LogisticRegression: accuracy {LogisticRegression(max_iter=5000).fit(Xtr, ytr).score(Xte, yte):.4f}")
    os.makedirs(OUT, exist_ok=True)
    print("curves:", clf.history_.plot(os.path.join(OUT, "classification.png"), title="Classifier on digits"))
