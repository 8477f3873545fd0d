"""Compress the digits to 8 numbers with dlcore's AutoEncoder and compare the reconstructions with PCA's.

Prints the held-out mean squared reconstruction error of the AutoEncoder and of PCA with 8 components, and
saves the learning curves to examples/out/autoencoder.png. Under a minute.

    python examples/autoencoder.py
"""
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split

from dlcore.tasks import AutoEncoder

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    Xtr, Xte = train_test_split(X, test_size=0.25, random_state=0, stratify=y)
    ae = AutoEncoder(n_components=8, random_state=0).fit(Xtr)
    pca = PCA(n_components=8).fit(Xtr)
    pca_err = np.mean((pca.inverse_transform(pca.transform(Xte)) - Xte) ** 2)
    print(f"AutoEncoder(8): reconstruction MSE {ae.reconstruction_error(Xte):.3f} ({ae.n_iter_} epochs)")
    print(f"        PCA(8): reconstruction MSE {pca_err:.3f}")
    os.makedirs(OUT, exist_ok=True)
    print("curves:", ae.history_.plot(os.path.join(OUT, "autoencoder.png"), title="AutoEncoder(8) on digits"))
