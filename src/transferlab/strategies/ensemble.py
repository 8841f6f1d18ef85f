"""Several linear heads over pooled features of one or more frozen featurizers, probabilities averaged.

One class covers every combined model that ``--ensemble`` and ``--strategy auto`` produce:

- K fold heads on one featurizer (``--cv K --ensemble`` of a linear probe): one member, K heads;
- a linear probe on the concatenated features of several backbones: several members, one head
  reading all of them;
- an averaged ensemble of backbones: several members, one head per member;
- fold models that were fine-tuned above a shared frozen prefix (``--cv K --ensemble`` of a backprop
  strategy, :func:`fold_ensemble`): ``shared_upto`` stages run once, each fold's own stages and head
  (``head``: the runs' head configuration) above them.

``forward`` returns the log of the averaged class probabilities (with ``flip``, also averaged
over the horizontally flipped image), so ``softmax(forward(x))`` are the averaged probabilities
and every consumer of logits (predict, evaluate, serve, ONNX export) works unchanged.

The input is prepared by one preprocessing (``preprocessing``, normalised by its mean/std); a
member with another input size or normalisation gets the image resized and re-normalised inside
the model, the same way during training and at inference.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from transferlab.errors import ConfigError
from transferlab.strategies.model import HeadConfig, TransferModel, build_head
from transferlab.zoo import Backbone, Preprocessing

KIND = "multi"


class _Adapter(nn.Module):
    """Master-normalised input -> the member's size and normalisation (identity when they agree)."""

    def __init__(self, master: Preprocessing, member: Preprocessing) -> None:
        super().__init__()
        self.size = member.input_size
        self.resize = member.input_size != master.input_size
        scale = torch.tensor(master.std) / torch.tensor(member.std)
        shift = (torch.tensor(master.mean) - torch.tensor(member.mean)) / torch.tensor(member.std)
        self.renorm = not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm:
            x = x * self.scale + self.shift
        if self.resize:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


def featurizer(backbone: Backbone, *, cut: int | None = None, pool: str = "avg") -> TransferModel:
    """A :class:`TransferModel` whose head is the identity: ``model(x)`` are its pooled features.

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> f = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=3)
        >>> f(torch.zeros(1, 3, 64, 64)).shape[1] == f.in_features
        True
    """
    model = TransferModel(backbone=backbone, num_classes=2, head=HeadConfig(kind="linear", dropout=0.0, pool=pool),
                          cut=cut)
    model.head = nn.Sequential(nn.Identity())
    model.num_classes = 0
    return model


class MultiModel(nn.Module):
    """Members' pooled features -> one linear head per group of members -> averaged probabilities.

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> f = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=3)
        >>> heads = [nn.Linear(f.in_features, 4), nn.Linear(f.in_features, 4)]
        >>> m = MultiModel(members=[f], heads=heads, groups=[[0], [0]], preprocessing=f.preprocessing)
        >>> with torch.no_grad():  # the output is the log of the averaged probabilities
        ...     total = m(torch.zeros(2, 3, 224, 224)).exp().sum(1)
        >>> bool(torch.allclose(total, torch.ones(2)))
        True
    """

    def __init__(self, *, members: list[TransferModel], heads: list[nn.Module], groups: list[list[int]],
                 preprocessing: Preprocessing, flip: bool = False, shared_upto: int = 0,
                 head: HeadConfig | None = None) -> None:
        super().__init__()
        if not members or not heads or len(heads) != len(groups):
            raise ConfigError(f"MultiModel: expected >= 1 member and one group per head; got {len(members)} "
                              f"members, {len(heads)} heads, {len(groups)} groups")
        if any(not g or min(g) < 0 or max(g) >= len(members) for g in groups):
            raise ConfigError(f"MultiModel: groups must list member indices 0..{len(members) - 1}, got {groups}")
        if shared_upto and len({(m.backbone_name, m.preprocessing) for m in members}) > 1:
            raise ConfigError("MultiModel: shared_upto needs members of one backbone and preprocessing")
        self.members = nn.ModuleList(members)
        self.adapters = nn.ModuleList(_Adapter(preprocessing, m.preprocessing) for m in members)
        self.heads = nn.ModuleList(heads)
        self.groups = [list(g) for g in groups]
        self.preprocessing = preprocessing
        self.flip = flip
        self.shared_upto = shared_upto
        self.head_config = head  # None: each head is one nn.Linear; else heads are build_head(head) (fold models)
        outs = {int(h.out_features) for h in heads if isinstance(h, nn.Linear)}
        self.num_classes = outs.pop() if len(outs) == 1 else int(heads[0](torch.zeros(1, self._width(0))).shape[1])
        self.backbone_name = "+".join(dict.fromkeys(m.backbone_name for m in members))

    def _width(self, head: int) -> int:
        return sum(self.members[i].in_features for i in self.groups[head])

    def member_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every member for master-preprocessed images ``x``."""
        if self.shared_upto:
            base = self.members[0].prefix(self.adapters[0](x), start=0, stop=self.shared_upto)
            return [m.forward_from(base, self.shared_upto) for m in self.members]
        return [m(a(x)) for m, a in zip(self.members, self.adapters)]

    def probabilities_from_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Averaged probabilities of the heads on given member features (the training path uses this)."""
        probs = [head(torch.cat([feats[i] for i in g], dim=1)).softmax(1) for head, g in zip(self.heads, self.groups)]
        return torch.stack(probs).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities_from_features(self.member_features(x))
        if self.flip:
            probs = 0.5 * (probs + self.probabilities_from_features(self.member_features(x.flip(3))))
        return probs.clamp_min(1e-12).log()

    def spec(self) -> dict[str, Any]:
        """What :func:`transferlab.experiments.artifacts.load_model` needs to rebuild the architecture."""
        return {"kind": KIND, "members": [{"backbone": m.backbone_name, "cut": m.cut, "pool": m.head_config.pool}
                                          for m in self.members],
                "groups": self.groups, "flip": self.flip, "shared_upto": self.shared_upto,
                **({"head": self.head_config.to_dict()} if self.head_config is not None else {}),
                "preprocessing": self.preprocessing.to_dict(), "num_classes": self.num_classes}


def linear_head(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding ``x @ weight.T + bias``."""
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def build_multi(spec: dict[str, Any], *, pretrained: bool = False) -> MultiModel:
    """The architecture of :meth:`MultiModel.spec` (weights random unless ``pretrained``)."""
    from transferlab.zoo import create_backbone

    members = [featurizer(create_backbone(m["backbone"], pretrained=pretrained), cut=m["cut"], pool=m["pool"])
               for m in spec["members"]]
    n = int(spec["num_classes"])
    head = HeadConfig.from_dict(spec["head"]) if spec.get("head") else None
    widths = [sum(members[i].in_features for i in g) for g in spec["groups"]]
    heads: list[nn.Module] = [nn.Linear(w, n) if head is None else build_head(head, in_features=w, num_classes=n)
                              for w in widths]
    return MultiModel(members=members, heads=heads, groups=spec["groups"],
                      preprocessing=Preprocessing.from_dict(spec["preprocessing"]), flip=bool(spec["flip"]),
                      shared_upto=int(spec.get("shared_upto", 0)), head=head)


def fold_ensemble(model: TransferModel, states: list[dict[str, torch.Tensor]], *, shared_upto: int,
                  flip: bool = False) -> MultiModel:
    """The fold models of cross-validation (``model``'s architecture, one state each) as one averaged model.

    Stages below ``shared_upto`` (the frozen prefix, identical in every fold) run once per image. ``flip``: the
    probabilities are also averaged over the mirrored image (one state and ``flip``: one model with flip TTA).

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> m = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
        ...                   head=HeadConfig(), cut=3)
        >>> ens = fold_ensemble(m, [m.state_dict(), m.state_dict()], shared_upto=2)
        >>> len(ens.heads), ens.shared_upto
        (2, 2)
    """
    members, heads = [], []
    for state in states:
        member = copy.deepcopy(model)
        member.load_state_dict(state)
        heads.append(member.head)
        member.head = nn.Sequential(nn.Identity())
        member.num_classes = 0
        members.append(member.eval())
    return MultiModel(members=members, heads=heads, groups=[[i] for i in range(len(states))],
                      preprocessing=model.preprocessing, flip=flip, shared_upto=shared_upto,
                      head=model.head_config).eval()
