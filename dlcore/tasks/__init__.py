"""dlcore.tasks: ready-made models with scikit-learn's estimator conventions.

    from dlcore.tasks import Classifier
    clf = Classifier(random_state=0).fit(X_train, y_train)
    clf.score(X_test, y_test); clf.history_.plot("curves.png")

| estimator | task |
| --- | --- |
| `Regressor`, `Classifier`, `Tagger` | MLPs for regression, classification, multi-label tagging |
| `KMeans` | k-means++ and Lloyd on a fused distance + argmin kernel |
| `AutoEncoder`, `MaskedPretrainer` | unsupervised and self-supervised representations |
| `SequenceClassifier`, `LanguageModel`, `Forecaster` | sequence models (`dlcore.tasks.sequence`) |

Every estimator takes ``random_state`` and ``verbose`` and keeps ``history_`` (a `dlcore.train.History`)
after ``fit``. The sequence models are imported on first use, so this package imports without them.
"""
from dlcore.tasks.supervised import Classifier, Regressor, Tagger
from dlcore.tasks.unsupervised import AutoEncoder, KMeans, MaskedPretrainer

_SEQUENCE = ("SequenceClassifier", "LanguageModel", "Forecaster")

__all__ = [
    "AutoEncoder",
    "Classifier",
    "Forecaster",
    "KMeans",
    "LanguageModel",
    "MaskedPretrainer",
    "Regressor",
    "SequenceClassifier",
    "Tagger",
]


def __getattr__(name):
    if name in _SEQUENCE:
        import importlib

        try:
            module = importlib.import_module("dlcore.tasks.sequence")
        except ModuleNotFoundError as exc:
            if exc.name != "dlcore.tasks.sequence":
                raise
            raise AttributeError(f"dlcore.tasks.{name} lives in dlcore.tasks.sequence, which is not "
                                 "available in this installation") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'dlcore.tasks' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SEQUENCE))
