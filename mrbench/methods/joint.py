"""joint: one network trained on the pooled data of all tasks.

``train.sampling = "stratified"`` (the default, and the rule every method shares)
interleaves the tasks, which up-samples the scarce one to the abundant one's rate —
the meta-learners draw their tasks 50/50 the same way; ``"uniform"`` draws slices
uniformly from the pool (the scarce task is seen in proportion to its size: 20 % of
batches at level 2 of the demo).
"""

from __future__ import annotations

from .base import Method, Phase


class Joint(Method):
    name = "joint"
    key = "joint"  # the one network's name in self.models (and its phase's)

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        self.models[self.key] = self.build(make_backbone)

    def build(self, make_backbone):
        return make_backbone()

    def phases(self) -> list[Phase]:
        return [
            Phase(
                name=self.key,
                budget=self.plan.budget,
                lr=self.plan.lr,
                modules=[self.key],
                tasks=list(range(len(self.tasks))),
                step=self.supervised_step(self.key),
                sampling=self.plan.sampling,
            )
        ]
