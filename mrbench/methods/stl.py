"""stl: single-task learning, one network per task trained only on that task's (scarce) data.

The budget is split equally between the tasks, so STL spends the same number of
slices through forward+backward as every other method.
"""

from __future__ import annotations

from .base import Method, Phase


class STL(Method):
    name = "stl"

    def __init__(self, cfg, tasks, scarce, make_backbone):
        super().__init__(cfg, tasks, scarce, make_backbone)
        for i in range(len(self.tasks)):
            self.models[f"task{i}"] = make_backbone()

    def phases(self) -> list[Phase]:
        n = len(self.tasks)
        budget = self.cfg.train.budget
        shares = [budget // n + (1 if i < budget % n else 0) for i in range(n)]
        return [
            Phase(
                name=f"stl:{t.name}",
                budget=shares[i],
                lr=self.cfg.train.lr,
                modules=[f"task{i}"],
                tasks=[i],
                step=self.supervised_step(f"task{i}"),
            )
            for i, t in enumerate(self.tasks)
        ]

    def model_key(self, task: int) -> str:
        return f"task{task}"
