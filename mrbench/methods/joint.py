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

    def __init__(self, cfg, tasks, scarce, make_backbone):
        super().__init__(cfg, tasks, scarce, make_backbone)
        self.models["joint"] = make_backbone()

    def phases(self) -> list[Phase]:
        return [
            Phase(
                name="joint",
                budget=self.cfg.train.budget,
                lr=self.cfg.train.lr,
                modules=["joint"],
                tasks=list(range(len(self.tasks))),
                step=self.supervised_step("joint"),
                sampling=self.cfg.train.sampling,
            )
        ]
