"""Forecast yearly sunspot numbers with dlcore's Forecaster (a linear autoregression plus an MLP on lags).

Prints the one-step-ahead MAE over the last 60 years beside seasonal-naive (11-year cycle) and Ridge on the
same lags, and saves the learning curves and the forecasts to examples/out/forecasting.png. Seconds.

    python examples/forecasting.py
"""
import os

import numpy as np
from sklearn.linear_model import Ridge
from statsmodels.datasets import sunspots

from dlcore.tasks import Forecaster

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

if __name__ == "__main__":
    data = sunspots.load_pandas().data
    years, y = data["YEAR"].to_numpy(), data["SUNACTIVITY"].to_numpy(dtype=float)
    n_test, n_lags, season = 60, 12, 11
    train = y[:-n_test]
    idx = np.arange(len(y) - n_test, len(y))
    histories = np.stack([y[i - n_lags:i] for i in idx])  # the true past before each forecast year

    f = Forecaster(n_lags=n_lags, random_state=0).fit(train)
    pred = f.predict(histories)[:, 0]
    W = np.lib.stride_tricks.sliding_window_view(train, n_lags + 1)
    ridge = Ridge().fit(W[:, :-1], W[:, -1]).predict(histories)
    naive = y[idx - season]
    for name, p in [("Forecaster", pred), ("Ridge on the same lags", ridge), ("seasonal naive (11 y)", naive)]:
        print(f"{name:>24}: MAE {np.mean(np.abs(p - y[idx])):.2f}")
    print(f"{f.n_iter_} epochs, best at {f.history_.best_epoch + 1}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    curves = f.history_.plot(os.path.join(OUT, "forecasting_curves.png"), title="Forecaster on sunspots")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(years, y, color="gray", lw=1, label="observed")
    ax.plot(years[idx], pred, label="Forecaster (one step ahead)")
    ax.plot(years[idx], ridge, ls="--", label="Ridge")
    ax.set_xlabel("year")
    ax.set_ylabel("sunspots")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "forecasting.png"), dpi=100)
    print("curves:", curves, "forecasts:", os.path.join(OUT, "forecasting.png"))
