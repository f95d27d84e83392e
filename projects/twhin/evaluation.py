"""Link prediction on the validation edges: MRR and hits@1/10 of each edge's rhs among its
sampled negatives (random entities of the rhs table, and the rhs of other edges of the same
relation in the batch), per relation and overall, and AUROC of positive against negative scores.

A rank is pessimistic: ``1 +`` the number of negatives scoring at least the positive, so a model
that scores everything alike ranks last. Against n negatives, random scores give an MRR of about
``H(n + 1) / (n + 1)`` (0.088 for n = 50) and hits@1 of ``1 / (n + 1)``.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from projects.twhin.batch import EdgeBatch
from projects.twhin.data.edges import EdgeDataset
from tml.metrics import AUROC
from tml.observability.metric_loggers import MetricLoggers

logger = logging.getLogger(__name__)

# Sums kept per relation: edges, reciprocal ranks, hits@1, hits@10.
_EDGES, _RECIPROCAL, _HITS_1, _HITS_10 = range(4)


def random_mrr(negatives: int) -> float:
    """The MRR of random scores against ``negatives`` negatives per edge."""
    return sum(1.0 / rank for rank in range(1, negatives + 2)) / (negatives + 1)


class LinkPredictionEvaluation:
    """Evaluates the model on the validation edges; every rank calls it at the same steps.

    Args:
        dataset: This rank's validation batches (one pass; every rank gets as many batches).
        relation_names: The relations, in config order.
        num_steps: Batches per evaluation (< 0: all).
        loggers: Receive the metrics (on the main rank); closed by :meth:`close`.
        device: Where the model runs.
    """

    def __init__(
        self,
        dataset: EdgeDataset,
        relation_names: list[str],
        num_steps: int,
        loggers: MetricLoggers,
        device: torch.device,
    ) -> None:
        self.dataset = dataset
        self.relation_names = relation_names
        self.num_steps = num_steps
        self.loggers = loggers
        self.device = device

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        metrics = self.evaluate(model)
        self.loggers.log(step, metrics)
        return metrics

    def discard_after(self, step: int) -> None:
        """Forgets the results logged after ``step``, which a resumed job evaluates again."""
        self.loggers.discard_after(step)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The metrics of one pass (``num_steps`` batches) over the validation edges."""
        was_training = model.training
        model.eval()
        relations = len(self.relation_names)
        sums = torch.zeros(relations, 4, dtype=torch.float64)
        aurocs = [AUROC(sync_on_compute=True) for _ in range(relations + 1)]
        try:
            for index, batch in enumerate(self.dataset):
                if 0 <= self.num_steps <= index:
                    break
                _, outputs = model(batch.to(self.device))
                self._add(sums, aurocs, batch, {k: v.cpu() for k, v in outputs.items()})
        finally:
            model.train(was_training)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        metrics: dict[str, float] = {}
        names = [*self.relation_names, None]
        totals = torch.cat([sums, sums.sum(dim=0, keepdim=True)])
        for row, (name, auroc) in enumerate(zip(names, aurocs, strict=True)):
            suffix = f"/{name}" if name is not None else ""
            edges = totals[row, _EDGES].item()
            value = auroc.compute().item()
            if edges:
                metrics[f"mrr{suffix}"] = totals[row, _RECIPROCAL].item() / edges
                metrics[f"hits_at_1{suffix}"] = totals[row, _HITS_1].item() / edges
                metrics[f"hits_at_10{suffix}"] = totals[row, _HITS_10].item() / edges
                metrics[f"auroc{suffix}"] = value
        metrics["edges"] = totals[-1, _EDGES].item()
        return metrics

    def _add(
        self,
        sums: torch.Tensor,
        aurocs: list[AUROC],
        batch: EdgeBatch,
        outputs: dict[str, torch.Tensor],
    ) -> None:
        positive = outputs["positive"].double()
        negative = outputs["rhs_negative"].double()
        present = outputs["rhs_negative_weight"] > 0
        rank = 1 + ((negative >= positive[:, None]) & present).sum(dim=1).double()
        per_edge = torch.stack(
            [torch.ones_like(rank), 1.0 / rank, (rank <= 1).double(), (rank <= 10).double()], 1
        )
        sums.index_add_(0, batch.relations, per_edge)
        # AUROC over every (positive, negative) score pair, negatives weighted as present.
        weights = outputs["negative_weight"]
        scores = torch.cat([outputs["positive"], outputs["negative"].flatten()])
        labels = torch.cat([torch.ones_like(outputs["positive"]), torch.zeros(weights.numel())])
        weight = torch.cat([torch.ones_like(outputs["positive"]), weights.flatten()])
        relation = torch.cat(
            [batch.relations, batch.relations[:, None].expand_as(weights).flatten()]
        )
        probabilities = torch.sigmoid(scores)
        for index, auroc in enumerate(aurocs[:-1]):
            mask = relation == index
            auroc.update(probabilities[mask], labels[mask], weight[mask])
        aurocs[-1].update(probabilities, labels, weight)

    def close(self) -> None:
        self.loggers.close()
