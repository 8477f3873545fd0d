"""Tell balanced bracket sequences from unbalanced ones with dlcore's SequenceClassifier (a transformer
encoder with padding masks). Both classes hold as many '(' as ')', so a bag-of-tokens model is at chance.

Prints test accuracy beside logistic regression on token counts and saves the learning curves to
examples/out/sequence_classification.png. A few minutes on 2 CPU cores.

    python examples/sequence_classification.py
"""
import os

import numpy as np
from sklearn.linear_model import LogisticRegression

from dlcore.tasks import SequenceClassifier

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def brackets(n, rng, max_pairs=10):
    """Half balanced, half not; '(' = 0, ')' = 1, equal counts in every sequence."""
    seqs, labels = [], []
    for i in range(n):
        s = rng.permutation(np.repeat([0, 1], int(rng.integers(1, max_pairs + 1))))
        depth = np.cumsum(np.where(s == 0, 1, -1))
        balanced = i % 2 == 0
        if balanced:  # rotate to just after the deepest point: every prefix is then >= 0
            k = int(np.argmin(depth)) + 1
            s = np.concatenate([s[k:], s[:k]])
        elif depth.min() >= 0:  # already balanced: swap the first '(' with the last ')'
            s = s.copy()
            s[0], s[-1] = 1, 0
        seqs.append(s.tolist())
        labels.append(int(balanced))
    return seqs, np.array(labels)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    seqs, y = brackets(4000, rng)
    train_s, test_s, train_y, test_y = seqs[:3000], seqs[3000:], y[:3000], y[3000:]
    clf = SequenceClassifier(random_state=0, verbose=True).fit(train_s, train_y)
    counts = lambda ss: np.array([[s.count(0), s.count(1)] for s in ss])
    bag = LogisticRegression().fit(counts(train_s), train_y).score(counts(test_s), test_y)
    print(f"test accuracy: SequenceClassifier {clf.score(test_s, test_y):.3f}, bag of tokens {bag:.3f}")
    print("'(()())' ->", clf.predict([[0, 0, 1, 0, 1, 1]])[0], " '())(()' ->", clf.predict([[0, 1, 1, 0, 0, 1]])[0])
    os.makedirs(OUT, exist_ok=True)
    print("curves:", clf.history_.plot(os.path.join(OUT, "sequence_classification.png"),
                                       title="SequenceClassifier on balanced brackets"))
