"""transfer: pre-train on the abundant task(s), fine-tune on the scarce task(s).

Both phases count against the budget: ``train.pretrain_fraction`` of it
pre-trains, the rest fine-tunes at ``lr × train.finetune_lr_factor``. With
``train.budget_per = "network"`` the longer phase gets the whole budget and the other its
proportion (equal steps per network; run name ``-pernet``). The
fine-tuned network reconstructs the scarce tasks; the pre-trained one the
abundant tasks it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MrbenchError
from .base import Method, Phase


@dataclass
class TransferOptions:
    """``[train]`` keys of transfer."""

    pretrain_fraction: float = 0.5  # share of the budget spent pre-training
    finetune_lr_factor: float = 0.3  # fine-tuning lr = lr × this (0.3 measured better than 0.1, docs/guide.md)

    def check(self, key):
        if not 0 < self.pretrain_fraction < 1:
            raise MrbenchError(f"{key('pretrain_fraction')}: must be in (0, 1)")
        if not self.finetune_lr_factor > 0:
            raise MrbenchError(f"{key('finetune_lr_factor')}: must be > 0")


class Transfer(Method):
    name = "transfer"
    several_networks = True
    shares_phases = True  # the abundant task's phase repeats at every scarcity level
    options = {"train": TransferOptions}

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        if all(scarce) or not any(scarce):
            raise MrbenchError(
                "transfer needs at least one abundant and one scarce task "
                f"(data.tasks = {[t.context.contrast for t in tasks]}, scarce: {[t.context.contrast for t, s in zip(tasks, scarce) if s]})"
            )
        self.models["pretrained"] = make_backbone()
        self.models["finetuned"] = make_backbone()

    def phases(self) -> list[Phase]:
        own = self.opts  # [train], where transfer's own keys live
        per_network = self.network_budgets([own.pretrain_fraction, 1 - own.pretrain_fraction])
        pre = per_network[0] if per_network else max(1, round(self.plan.budget * own.pretrain_fraction))
        rest = per_network[1] if per_network else self.plan.budget - pre
        abundant = [i for i, s in enumerate(self.scarce) if not s]
        scarce = [i for i, s in enumerate(self.scarce) if s]
        return [
            Phase(
                "pretrain",
                pre,
                self.plan.lr,
                ["pretrained"],
                abundant,
                self.supervised_step("pretrained"),
                sampling=self.plan.sampling,
            ),
            Phase(
                "finetune",
                rest,
                self.plan.lr * own.finetune_lr_factor,
                ["finetuned"],
                scarce,
                self.supervised_step("finetuned"),
                sampling=self.plan.sampling,
                on_start=lambda: self.models["finetuned"].load_state_dict(self.models["pretrained"].state_dict()),
            ),
        ]

    def model_key(self, task: int) -> str:
        return "finetuned" if self.scarce[task] else "pretrained"
