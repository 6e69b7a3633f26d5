"""conditioned: one network for every task, modulated by the acquisition (issue 20).

Joint training (the same pooled data, sampling rule, budget and adaptation as ``joint``) of a
VarNet — or the U-Net, for the KM-MAML grid — whose regularisers are FiLM-modulated by a context
embedding (:mod:`mrbench.models.conditioning`): learned input-adaptive prompts (PromptMR+, the
CMRxRecon 2024 winner), the acquisition metadata from each file's ISMRMRD header (SDUM, arXiv
2512.17137), or both (``condition.on``). On an unseen context the metadata path embeds the new
contrast's own TR/TE/TI/flip and sampling, so a new contrast with known parameters is not a
new task to the network; the prompt path picks its mixture from the image. Test-time
adaptation is the same fine-tuning every method gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.fastmri_format import ACQUISITION_FIELDS
from ..errors import MrbenchError
from ..models.conditioning import CONDITION_SOURCES, condition_backbone, metadata_features
from .joint import Joint

#: Header fields metadata conditioning cannot do without (TI and the field strength are
#: optional: absent TI means not inversion recovery; absent B0 is a feature of its own).
REQUIRED_FIELDS = ("TR", "TE", "flipAngle_deg")


@dataclass
class ConditionOptions:
    """``[condition]`` keys of the conditioned method."""

    on: str = "metadata"  # prompt | metadata | both
    embedding: int = 32  # size of the metadata embedding and of each prompt
    prompts: int = 4  # learned prompts per cascade (prompt, both)

    def check(self, key):
        if self.on not in CONDITION_SOURCES:
            raise MrbenchError(f"{key('on')}: must be one of {', '.join(CONDITION_SOURCES)}, got {self.on!r}")
        if self.embedding < 1:
            raise MrbenchError(f"{key('embedding')}: must be ≥ 1, got {self.embedding}")
        if self.prompts < 1:
            raise MrbenchError(f"{key('prompts')}: must be ≥ 1, got {self.prompts}")


class Conditioned(Joint):
    name = "conditioned"
    key = "conditioned"
    backbones = ("varnet", "unet")
    options = {"condition": ConditionOptions}

    @classmethod
    def run_variant(cls, cfg) -> str:
        """``varnet-metadata``, ``unet-prompt``, …"""
        return f"{cfg.model.backbone}-{cfg.condition.on}"

    @classmethod
    def check_data(cls, cfg, data) -> None:
        if cfg.condition.on == "prompt":
            return
        groups = (data.train, data.val, data.test, data.unseen_test, data.unseen_support)
        for volume in (v for group in groups for t in group for v in t.volumes):
            values = dict(zip(ACQUISITION_FIELDS, volume.acquisition))
            missing = [f for f in REQUIRED_FIELDS if values.get(f) is None]
            if missing:
                where = "sequenceParameters/" + ", ".join(missing)
                raise MrbenchError(
                    f"{volume.path}: its ismrmrd_header has no {where}, which condition.on = "
                    f'{cfg.condition.on!r} needs (use condition.on = "prompt", which reads nothing from the file)'
                )

    def build(self, make_backbone):
        c = self.opts
        return condition_backbone(make_backbone(), c.on, c.embedding, c.prompts)

    def contexts_of(self, batch, ctx=None) -> list:
        """Each sample's sampling context: ``ctx`` for all (an unseen context), else its task's."""
        if ctx is not None:
            return [ctx] * batch.kspace.shape[0]
        return [self.tasks[int(t)].context for t in batch.task.tolist()]

    def features(self, model, batch, ctx=None):
        """The metadata MLP's input for a batch, or None when the model reads no metadata."""
        if model.metadata is None:
            return None
        if batch.acquisition is None:
            raise MrbenchError("metadata conditioning needs the batch's acquisition numbers")
        return metadata_features(batch.acquisition, self.contexts_of(batch, ctx))

    def run_model(self, model, batch, ctx=None):
        return model(batch.kspace, batch.mask, batch.num_low_frequencies, self.features(model, batch, ctx))

    def embedding(self, batch, ctx=None):
        """The metadata embedding (B, E) of a batch (None with ``condition.on = "prompt"``)."""
        model = self.models["conditioned"]
        return model.embed(self.features(model, batch, ctx))
