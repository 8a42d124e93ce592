"""Accuracy: share of predictions equal to the references (shipped so it loads offline by path)."""
import datasets
import evaluate

_DESCRIPTION = "Accuracy = correct predictions / all predictions."
_KWARGS = "predictions (list of int), references (list of int)"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        n = len(references)
        return {"accuracy": (sum(int(p == r) for p, r in zip(predictions, references)) / n) if n else 0.0}
