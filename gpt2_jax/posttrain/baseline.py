"""The classical baseline of a classification task: TF-IDF over character n-grams + logistic
regression (scikit-learn), trained on the same passages and splits as the fine-tuned models.

The regularisation strength C is chosen on the validation split from a small grid, as the
fine-tuned models choose their step by early stopping on validation; the test split is scored once.
scikit-learn is a test-extra dependency: without it this is a one-line error naming the install.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from gpt2_jax.posttrain import metrics as metrics_lib

C_GRID = (0.03, 0.1, 0.3, 1.0)


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=import-outside-toplevel
        from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise RuntimeError("the TF-IDF baseline needs scikit-learn: pip install 'gpt2-jax[test]' "
                           "(or pip install scikit-learn)") from None
    return TfidfVectorizer, LogisticRegression


def tfidf_logreg(train: tuple[Sequence[str], np.ndarray], validation: tuple[Sequence[str], np.ndarray],
                 test: tuple[Sequence[str], np.ndarray] | None, names: Sequence[str], ngrams: tuple[int, int] = (2, 5),
                 grid: Sequence[float] = C_GRID) -> dict:
    """Fit on train for each C of grid, keep the best validation accuracy, score validation and test.

    Returns {'C', 'features', 'seconds', 'val_*', 'test_*'} with from_predictions' metrics.
    """
    vectorizer_cls, logreg_cls = _sklearn()
    t0 = time.perf_counter()
    vectorizer = vectorizer_cls(analyzer="char_wb", ngram_range=ngrams, sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform(list(train[0]))
    x_val = vectorizer.transform(list(validation[0]))
    best = None
    for c in grid:
        model = logreg_cls(C=c, max_iter=2000).fit(x_train, train[1])
        accuracy = float(np.mean(model.predict(x_val) == validation[1]))
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    _, c, model = best
    out = {"C": c, "features": int(x_train.shape[1])}
    splits = [("val", validation)] + ([("test", test)] if test is not None else [])
    for prefix, (texts, labels) in splits:
        scored = metrics_lib.from_predictions(labels, model.predict(vectorizer.transform(list(texts))), names)
        out.update({f"{prefix}_{k}": v for k, v in scored.items()})
    out["seconds"] = time.perf_counter() - t0
    return out
