"""Short-answer metrics, SQuAD-style: exact match and token F1 after lower-casing and removing
punctuation, articles and extra whitespace, each the best over an example's accepted answers."""
import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "Exact match and word-overlap F1 of short answers (SQuAD normalisation), averaged over examples."
_KWARGS = "predictions (list of str), references (list of list of str: the accepted answers)"


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, answer: str) -> float:
    p, a = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not p or not a:
        return float(p == a)
    common = sum((collections.Counter(p) & collections.Counter(a)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(a)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class QA(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    @staticmethod
    def score_one(prediction: str, answers: list) -> dict:
        """Per-example scores (for paired statistics)."""
        return {"exact_match": float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers)),
                "token_f1": max((_f1(prediction, a) for a in answers), default=0.0)}

    def _compute(self, predictions, references):
        scores = [self.score_one(p, r) for p, r in zip(predictions, references)]
        n = max(1, len(scores))
        return {k: sum(s[k] for s in scores) / n for k in ("exact_match", "token_f1")}
