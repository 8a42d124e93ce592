"""Macro-F1: the unweighted mean over labels of per-label F1 (labels seen in references or predictions)."""
import datasets
import evaluate

_DESCRIPTION = "Macro-averaged F1 over the labels present in references or predictions."
_KWARGS = "predictions (list of int), references (list of int)"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        labels = sorted(set(predictions) | set(references))
        scores = []
        for label in labels:
            tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
            fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
            fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
            scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {"f1": sum(scores) / len(scores) if scores else 0.0}
