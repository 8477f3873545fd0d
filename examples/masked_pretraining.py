"""Self-supervised features for the digits with dlcore's MaskedPretrainer, judged by a linear probe.

The pretrainer sees the training images without labels and learns to fill in randomly hidden pixels. A
LogisticRegression trained on 10% of the labels then classifies the test images from its 32 features, and
the same probe on the raw pixels is printed beside it. Saves the pretraining curves to
examples/out/masked_pretraining.png. A minute or two.

    python examples/masked_pretraining.py
"""
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dlcore.tasks import MaskedPretrainer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def probe(Ftr, Fte, ytr, yte, idx):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return model.fit(Ftr[idx], ytr[idx]).score(Fte, yte)


if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    mp = MaskedPretrainer(n_components=32, random_state=0).fit(Xtr)  # no labels
    Ftr, Fte = mp.transform(Xtr), mp.transform(Xte)
    idx = np.random.default_rng(0).choice(len(Xtr), len(Xtr) // 10, replace=False)  # 10% of the labels
    print(f"linear probe, {len(idx)} labels: MaskedPretrainer features {probe(Ftr, Fte, ytr, yte, idx):.4f} | "
          f"raw pixels {probe(Xtr, Xte, ytr, yte, idx):.4f} ({mp.n_iter_} pretraining epochs)")
    os.makedirs(OUT, exist_ok=True)
    print("curves:", mp.history_.plot(os.path.join(OUT, "masked_pretraining.png"),
                                      title="MaskedPretrainer on digits"))
