"""Multi-label tagging with dlcore's Tagger (one sigmoid per tag, binary cross-entropy on the logits).

Two problems: the digits, tagged from their label (even, prime, >= 5, has a closed loop: 0 6 8 9), and
scikit-learn's make_multilabel_classification. Prints the held-out micro-F1 beside scikit-learn's
MLPClassifier on each and saves the digits run's learning curves to examples/out/tagging.png. A minute.

    python examples/tagging.py
"""
import os

import numpy as np
from sklearn.datasets import load_digits, make_multilabel_classification
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from dlcore.tasks import Tagger

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
TAGS = ["even", "prime", ">=5", "closed loop"]


def digit_tags(y):
    return np.stack([y % 2 == 0, np.isin(y, [2, 3, 5, 7]), y >= 5, np.isin(y, [0, 6, 8, 9])], axis=1).astype(int)


if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    X2, Y2 = make_multilabel_classification(n_samples=2000, n_features=20, n_classes=5, random_state=0)
    problems = {"digit tags": (Xtr, Xte, digit_tags(ytr), digit_tags(yte)),
                "make_multilabel_classification": train_test_split(X2, Y2, test_size=0.25, random_state=0)}
    for name, (Atr, Ate, Ttr, Tte) in problems.items():
        tagger = Tagger(random_state=0).fit(Atr, Ttr)
        ours = f1_score(Tte, tagger.predict(Ate), average="micro")
        base = f1_score(Tte, MLPClassifier(random_state=0, max_iter=500).fit(Atr, Ttr).predict(Ate), average="micro")
        print(f"{name:>31}: Tagger micro-F1 {ours:.4f} | MLPClassifier {base:.4f} ({tagger.n_iter_} epochs)")
        if name == "digit tags":
            per_tag = f1_score(Tte, tagger.predict(Ate), average=None)
            print("   per tag: " + ", ".join(f"{t} {v:.3f}" for t, v in zip(TAGS, per_tag)))
            os.makedirs(OUT, exist_ok=True)
            print("   curves:", tagger.history_.plot(os.path.join(OUT, "tagging.png"), title="Tagger on digit tags"))
