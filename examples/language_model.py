"""Train dlcore's character-level transformer on the standard library's own source code.

Prints held-out bits per character beside an add-one bigram model's, a sample continuation, and saves the
learning curves to examples/out/language_model.png. About 5 minutes on 2 CPU cores.

    python examples/language_model.py
"""
import glob
import os
import time

import numpy as np

from dlcore.tasks import LanguageModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def stdlib_text(n_chars=400_000):
    parts, total = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as fh:
            parts.append(fh.read())
        total += len(parts[-1])
        if total >= n_chars:
            break
    return "".join(parts)[:n_chars]


def bigram_bits_per_char(train, test):
    """Add-one smoothed character bigram (one extra id for characters unseen in training)."""
    index = {c: i for i, c in enumerate(sorted(set(train)))}
    V = len(index) + 1
    a, b = (np.array([index.get(c, V - 1) for c in s]) for s in (train, test))
    counts = np.ones((V, V))
    np.add.at(counts, (a[:-1], a[1:]), 1)
    return float(-np.log2((counts / counts.sum(1, keepdims=True))[b[:-1], b[1:]]).mean())


if __name__ == "__main__":
    text = stdlib_text()
    cut = int(len(text) * 0.9)
    train, test = text[:cut], text[cut:]
    start = time.perf_counter()
    lm = LanguageModel(random_state=0, verbose=True).fit(train)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    bpc, base = lm.bits_per_char(test), bigram_bits_per_char(train, test)
    print(f"held-out bits/char: transformer {bpc:.3f}, add-one bigram {base:.3f} ({1 - bpc / base:.0%} lower)")
    print("sample:\n" + "def " + lm.generate("def ", 300, temperature=0.7, random_state=0))
    os.makedirs(OUT, exist_ok=True)
    print("curves:", lm.history_.plot(os.path.join(OUT, "language_model.png"),
                                      title="LanguageModel on stdlib source (one point per 50 steps)"))
