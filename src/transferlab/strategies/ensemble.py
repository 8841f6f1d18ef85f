"""Several linear heads over pooled features of one or more frozen featurizers, probabilities averaged.

One class covers every combined model that ``--ensemble`` and ``--strategy auto`` produce:

- K fold heads on one featurizer (``--cv K --ensemble`` of a linear probe): one member, K heads;
- a linear probe on the concatenated features of several backbones: several members, one head
  reading all of them;
- an averaged ensemble of backbones: several members, one head per member;
- fold models that were fine-tuned above a shared frozen prefix (``--cv K --ensemble`` of a backprop
  strategy, :func:`fold_ensemble`): ``shared_upto`` stages run once, each fold's own stages and head
  (``head``: the runs' head configuration) above them;
- a fine-tuned network beside linear heads on frozen features (``--strategy auto``'s cross-family
  ensembles, :func:`with_network`): each head has its own configuration (``head_configs``) and
  weight (``weights``).

``forward`` returns the log of the (weighted; by default equally) averaged class probabilities
(with ``flip``, also averaged over the horizontally flipped image), so ``softmax(forward(x))``
are the averaged probabilities and every consumer of logits (predict, evaluate, serve, ONNX export) works unchanged.

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
                 head: HeadConfig | None = None, head_configs: list[HeadConfig | None] | None = None,
                 weights: list[float] | None = None) -> None:
        super().__init__()
        if not members or not heads or len(heads) != len(groups):
            raise ConfigError(f"MultiModel: expected >= 1 member and one group per head; got {len(members)} "
                              f"members, {len(heads)} heads, {len(groups)} groups")
        if head is not None and head_configs is not None:
            raise ConfigError("MultiModel: give one head configuration for all heads (head) or one per head "
                              "(head_configs), not both")
        head_configs = head_configs if head_configs is not None else [head] * len(heads)
        for name, per_head in (("head_configs", head_configs), ("weights", weights)):
            if per_head is not None and len(per_head) != len(heads):
                raise ConfigError(f"MultiModel: expected one entry of {name} per head ({len(heads)}), "
                                  f"got {len(per_head)}")
        if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"MultiModel: weights must be >= 0 with a positive sum, got {weights}")
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
        self.head_configs = list(head_configs)  # per head: None is one nn.Linear, else build_head(config)
        total = sum(weights) if weights is not None else float(len(heads))
        self.weights = [w / total for w in weights] if weights is not None else [1.0 / len(heads)] * len(heads)
        outs = {int(h.out_features) for h in heads if isinstance(h, nn.Linear)}
        self.num_classes = outs.pop() if len(outs) == 1 else int(heads[0](torch.zeros(1, self._width(0))).shape[1])
        self.backbone_name = "+".join(dict.fromkeys(m.backbone_name for m in members))

    @property
    def head_config(self) -> HeadConfig | None:
        """The one configuration of every head (fold models), or None (linear heads, or heads that differ)."""
        first = self.head_configs[0]
        return first if all(c == first for c in self.head_configs) else None

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
        probs = [w * head(torch.cat([feats[i] for i in g], dim=1)).softmax(1)
                 for head, g, w in zip(self.heads, self.groups, self.weights)]
        return torch.stack(probs).sum(0)

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
                **self._head_spec(),
                **({"weights": self.weights} if len(set(self.weights)) > 1 else {}),
                "preprocessing": self.preprocessing.to_dict(), "num_classes": self.num_classes}


    def _head_spec(self) -> dict[str, Any]:
        uniform = self.head_config
        if uniform is None and any(c is not None for c in self.head_configs):  # heads of different kinds
            return {"head_configs": [h.to_dict() if h is not None else None for h in self.head_configs]}
        return {"head": uniform.to_dict()} if uniform is not None else {}


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
    widths = [sum(members[i].in_features for i in g) for g in spec["groups"]]
    configs = ([HeadConfig.from_dict(h) if h is not None else None for h in spec["head_configs"]]
               if spec.get("head_configs") is not None else
               [HeadConfig.from_dict(spec["head"]) if spec.get("head") else None] * len(widths))
    heads: list[nn.Module] = [nn.Linear(w, n) if cfg is None else build_head(cfg, in_features=w, num_classes=n)
                              for w, cfg in zip(widths, configs)]
    return MultiModel(members=members, heads=heads, groups=spec["groups"],
                      preprocessing=Preprocessing.from_dict(spec["preprocessing"]), flip=bool(spec["flip"]),
                      shared_upto=int(spec.get("shared_upto", 0)), head_configs=configs,
                      weights=spec.get("weights"))


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
        member, head = headless(model, state=state)
        members.append(member)
        heads.append(head)
    return MultiModel(members=members, heads=heads, groups=[[i] for i in range(len(states))],
                      preprocessing=model.preprocessing, flip=flip, shared_upto=shared_upto,
                      head=model.head_config).eval()


def headless(model: TransferModel, *, state: dict[str, torch.Tensor] | None = None) -> tuple[TransferModel, nn.Module]:
    """A copy of ``model`` (with ``state`` loaded, if given) whose output is its pooled features, and its head."""
    member = copy.deepcopy(model)
    if state is not None:
        member.load_state_dict(state)
    head = member.head
    member.head = nn.Sequential(nn.Identity())
    member.num_classes = 0
    return member.eval(), head


def with_network(network: TransferModel, linear: MultiModel, *, weight: float = 0.5) -> MultiModel:
    """A trained ``network`` (e.g. a fine-tuned one) and the linear heads of ``linear`` in one averaged model:
    the network's probabilities weigh ``weight``, ``linear``'s (as averaged there) the rest. The input is
    ``linear``'s preprocessing; the network gets it resized and re-normalised to its own inside the model.

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> net = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
        ...                     head=HeadConfig(), cut=3)
        >>> f = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=3)
        >>> lin = MultiModel(members=[f], heads=[nn.Linear(f.in_features, 3)], groups=[[0]],
        ...                  preprocessing=f.preprocessing)
        >>> m = with_network(net, lin)
        >>> m.weights, [h is None for h in m.head_configs]
        ([0.5, 0.5], [False, True])
    """
    if linear.shared_upto or any(c is not None for c in linear.head_configs):
        raise ConfigError("with_network: expected linear heads on frozen features (a linear-probe MultiModel), "
                          f"got shared_upto={linear.shared_upto}, heads={linear.head_configs}")
    if not 0.0 < weight < 1.0:
        raise ConfigError(f"with_network: weight must be in (0, 1), got {weight}")
    member, head = headless(network)
    return MultiModel(members=[member, *linear.members], heads=[head, *linear.heads],
                      groups=[[0]] + [[i + 1 for i in g] for g in linear.groups],
                      preprocessing=linear.preprocessing, flip=linear.flip,
                      head_configs=[network.head_config] + [None] * len(linear.heads),
                      weights=[weight] + [(1.0 - weight) * w for w in linear.weights]).eval()
