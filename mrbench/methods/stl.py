"""stl: single-task learning, one network per task trained only on that task's (scarce) data.

``train.budget_per`` says how the budget is spent: ``"run"`` (the default) splits it
equally between the task networks, so STL spends the same number of slices through
forward+backward as every other method (equal compute); ``"network"`` gives each task
network the whole budget (equal steps per network, Liu et al. 2021's protocol: every network
trains for the same epochs). The run name says ``-pernet`` for the second.
"""

from __future__ import annotations

from .base import Method, Phase


class STL(Method):
    name = "stl"
    several_networks = True
    shares_phases = True  # the abundant task's phase repeats at every scarcity level

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        for i in range(len(self.tasks)):
            self.models[f"task{i}"] = make_backbone()

    def phases(self) -> list[Phase]:
        n, budget = len(self.tasks), self.plan.budget
        shares = self.network_budgets([1.0] * n) or [budget // n + (1 if i < budget % n else 0) for i in range(n)]
        return [
            Phase(
                name=f"stl:{t.name}",
                budget=shares[i],
                lr=self.plan.lr,
                modules=[f"task{i}"],
                tasks=[i],
                step=self.supervised_step(f"task{i}"),
            )
            for i, t in enumerate(self.tasks)
        ]

    def model_key(self, task: int) -> str:
        return f"task{task}"
