"""FiftyOne custom evaluation metrics: proper IoU, Dice, Fω and Sα for evaluate_segmentations.

FiftyOne's own segmentation evaluation reports pixel accuracy (and a "dice" that is
pixel accuracy too, shared/reference/metrics.md §4); these add the field's metrics to any
``evaluate_segmentations(..., custom_metrics=[...])`` run and to the App's Evaluate form.
Each writes ``<eval_key>_concept_<metric>`` per sample (FiftyOne's own ``<eval_key>_dice``
stays free) and returns the mean.
"""

import fiftyone.operators as foo


class _ConceptMetric(foo.EvaluationMetric):
    metric = ""  # a key of conceptseg.metrics.score_sample
    label = ""
    description = ""
    lower_is_better = False

    @property
    def config(self):
        return foo.EvaluationMetricConfig(
            name=f"concept_{self.metric}",
            label=self.label,
            description=self.description,
            eval_types=["segmentation"],
            aggregate_key=self.metric,
            lower_is_better=self.lower_is_better,
            unlisted=True,
        )

    def compute(self, samples, results, **kwargs):
        from conceptseg.runs.evaluation import metric_field, score_samples

        scores, _, _ = score_samples(samples, results.config.pred_field, results.config.gt_field)
        values = {i: s[self.metric] for i, s in scores.items()}
        samples.set_values(metric_field(results.key, self.metric), values, key_field="id")
        return sum(values.values()) / len(values) if values else None

    def get_fields(self, samples, config, eval_key):
        return [f"{eval_key}_concept_{self.metric}"]  # conceptseg.runs.evaluation.metric_field, without the import


class ConceptIoU(_ConceptMetric):
    metric, label = "iou", "IoU (foreground)"
    description = "Foreground intersection over union per sample; its mean is gIoU"


class ConceptDice(_ConceptMetric):
    metric, label = "dice", "Dice (foreground)"
    description = "2|P∩G| / (|P|+|G|) per sample (pysodmetrics)"


class WeightedFMeasure(_ConceptMetric):
    metric, label = "wfm", "Weighted F-measure (Fω)"
    description = "Margolin et al. 2014, β² = 1 (pysodmetrics)"


class SMeasure(_ConceptMetric):
    metric, label = "sm", "S-measure (Sα)"
    description = "Structure measure, α = 0.5 (pysodmetrics)"
