"""The open zoo: ``timm:<name>`` builds any timm model as a :class:`Backbone`.

Stages come from the model's ``feature_info`` (each stage ends at a module timm reports as a
feature level); Vision Transformers (ViT, DeiT, DINOv2: timm's ``VisionTransformer``) are cut into an
``embed`` stage and their blocks grouped into :data:`VIT_STAGES` stages. Preprocessing comes from the
model's ``pretrained_cfg``; weights from ``weights=FILE``, the torch hub or Hugging Face cache, or a
Hugging Face download when the network is reachable (:func:`transferlab.zoo.weights.resolve_weights`).
Every split is checked: the stages followed by the classifier must reproduce the model's own output
on a test input, otherwise the model is refused (no silent approximation).

Example:
    >>> bb = create_timm_backbone("resnet18", pretrained=False)
    >>> bb.name, bb.stage_names
    ('timm:resnet18', ['stem', 'layer1', 'layer2', 'layer3', 'layer4'])
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.zoo.backbone import Backbone, WeightsInfo
from transferlab.zoo.preprocessing import Preprocessing
from transferlab.zoo.weights import WeightsSpec, availability, load_into, resolve_weights

log = logging.getLogger("transferlab.zoo")

PREFIX = "timm:"
VIT_STAGES = 4  # transformer blocks are grouped into this many stages (12 blocks: 3 per stage)
HEAD_CHILDREN = ("global_pool", "fc_norm", "head_drop", "attn_pool", "head", "fc", "classifier", "flatten")


def check_timm_name(name: str) -> None:
    """Raise ConfigError unless timm knows ``name`` (an architecture, optionally ``.tag``)."""
    import timm

    if name and timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"did you mean {', '.join(PREFIX + c for c in close)}? " if close else ""
    raise ConfigError(f"unknown timm model {name!r} (from --backbone {PREFIX}{name}); {hint}"
                      f"`transferlab models --timm PATTERN` lists timm's names")


def list_timm_models(pattern: str) -> list[dict[str, Any]]:
    """timm architectures matching ``pattern`` (fnmatch; a bare word matches as ``*word*``), with the
    Hugging Face repo of their default weights and whether those are in the local cache.

    Example:
        >>> names = [r["name"] for r in list_timm_models("resnet18")]
        >>> "timm:resnet18" in names and "timm:resnet50" not in names
        True
    """
    import timm

    pat = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    rows = []
    for arch in timm.list_models():
        if not fnmatch.fnmatch(arch, pat):
            continue
        cfg = _pretrained_cfg(arch)
        spec = _weights_spec(cfg)
        rows.append({"name": PREFIX + arch, "hf_hub_id": cfg.get("hf_hub_id"),
                     "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
                     "weights_here": availability(spec)})
    return rows


def _pretrained_cfg(name: str) -> dict[str, Any]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _weights_spec(cfg: dict[str, Any]) -> WeightsSpec:
    url = cfg.get("url") or ""
    hub_file = url.rsplit("/", 1)[-1] if url.endswith((".pth", ".pt", ".safetensors")) else None
    return WeightsSpec(filename=hub_file, url=None, hf_hub_id=cfg.get("hf_hub_id"))


def preprocessing_of(cfg: dict[str, Any]) -> Preprocessing:
    """Input size, resize, mean/std and interpolation from a timm ``pretrained_cfg``."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop = float(cfg.get("crop_pct", 0.875) or 0.875)
    interp = cfg.get("interpolation", "bilinear")
    return Preprocessing(input_size=size, resize_size=int(round(size / crop)),
                         mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
                         std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
                         interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear")


class _Calls(nn.Module):
    """Registers ``parts`` (so their parameters belong to this stage) and runs ``fn(model, x)``.

    The timm model itself is held unregistered: each parameter belongs to exactly one stage.
    """

    def __init__(self, model: nn.Module, parts: dict[str, nn.Module | nn.Parameter], fn: str) -> None:
        super().__init__()
        for name, part in parts.items():
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            else:
                self.add_module(name, part)
        self._model = (model,)
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._model[0]
        if self._fn == "vit_embed":
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        return m.forward_head(x)


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"))


def _split_vit(model: nn.Module) -> tuple["OrderedDict[str, nn.Module]", nn.Module]:
    embed_parts: dict[str, nn.Module | nn.Parameter] = {
        n: getattr(model, n) for n in ("patch_embed", "pos_drop", "patch_drop", "norm_pre")}
    for n in ("cls_token", "reg_token", "pos_embed"):
        p = getattr(model, n, None)
        if isinstance(p, nn.Parameter):
            embed_parts[n] = p
    stages: OrderedDict[str, nn.Module] = OrderedDict(embed=_Calls(model, embed_parts, "vit_embed"))
    blocks = list(model.blocks)
    k = min(VIT_STAGES, len(blocks))
    bounds = [round(i * len(blocks) / k) for i in range(k + 1)]
    groups = [list(range(bounds[i], bounds[i + 1])) for i in range(k)]
    for gi, idx in enumerate(groups):
        mods = [blocks[i] for i in idx] + ([model.norm] if gi == k - 1 else [])
        stages[f"blocks{idx[0] + 1}-{idx[-1] + 1}"] = nn.Sequential(*mods)
    head = _Calls(model, {n: getattr(model, n) for n in ("fc_norm", "head_drop", "head", "attn_pool")
                          if isinstance(getattr(model, n, None), nn.Module)}, "head")
    return stages, head


def _children_flat(model: nn.Module, features: set[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in order; a child holding a feature module (``blocks.3``) is expanded one level."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if any(f.startswith(name + ".") for f in features):
            out += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            out.append((name, child))
    return out


def _split_cnn(name: str, model: nn.Module) -> tuple["OrderedDict[str, nn.Module]", nn.Module]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(f"{PREFIX}{name}: timm gives no feature_info for it, so it cannot be cut into stages")
    features = [f["module"] if isinstance(f, dict) else f for f in (info.get_dicts() if hasattr(info, "get_dicts")
                                                                   else info)]
    children = _children_flat(model, set(features))
    names = [n for n, _ in children]
    missing = [f for f in features if f not in names]
    if missing:
        raise ConfigError(f"{PREFIX}{name}: feature module(s) {missing} are nested deeper than one level; "
                          "this model cannot be cut into sequential stages")
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    start = 0
    for f in features:
        end = names.index(f) + 1
        if end <= start:
            continue
        mods = [m for _, m in children[start:end]]
        first_is_stem = not stages and "." not in f and not f.startswith("layer")  # act1, bn1, stem
        label = "stem" if first_is_stem else f.replace(".", "_")
        stages[label] = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
        start = end
    rest = children[start:]
    head_at = next((i for i, (n, _) in enumerate(rest) if n.split(".")[0] in HEAD_CHILDREN), len(rest))
    tail = [m for _, m in rest[:head_at]]
    if any(p.numel() for m in tail for p in m.parameters()):
        stages["conv_head"] = tail[0] if len(tail) == 1 else nn.Sequential(*tail)
    elif tail:  # parameter-free (e.g. an Identity norm_pre): part of the last stage
        last = next(reversed(stages))
        stages[last] = nn.Sequential(stages[last], *tail)
    head = _Calls(model, {n.replace(".", "_"): m for n, m in rest[head_at:]}, "head")
    return stages, head


def _feature_dim(model: nn.Module, stages: "OrderedDict[str, nn.Module]", size: int) -> tuple[int, ...]:
    with torch.inference_mode():
        x = torch.zeros(1, 3, size, size)
        for stage in stages.values():
            x = stage(x)
    return tuple(x.shape[1:])


def _check_split(name: str, model: nn.Module, stages: "OrderedDict[str, nn.Module]", head: nn.Module,
                 size: int) -> None:
    """The stages + head must compute what the model computes (eval mode, a seeded input)."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x)
        got = x
        for stage in stages.values():
            got = stage(got)
        got = head(got)
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-3):
        raise ConfigError(f"{PREFIX}{name}: its forward is not the sequence of its modules (the cut stages did not "
                          "reproduce the model's output), so it cannot be split into stages here; CNNs with "
                          "feature_info (ResNet, EfficientNet, ConvNeXt, RegNet, MobileNet...) and ViT/DeiT/DINOv2 "
                          "are supported")


def create_timm_backbone(name: str, *, pretrained: bool = True, weights: str | os.PathLike[str] | None = None,
                         download: bool = True) -> Backbone:
    """``timm:<name>`` as a Backbone (``name`` without the prefix); weights resolved like the zoo's."""
    import timm

    check_timm_name(name)
    cfg = _pretrained_cfg(name)
    model = timm.create_model(name, pretrained=False).eval()
    full = PREFIX + name
    if pretrained or weights is not None:
        resolved = resolve_weights(full, _weights_spec(cfg), explicit=weights, download=download)
        how = load_into(model, resolved.state_dict, name=full)
        info = WeightsInfo(pretrained=True, source=resolved.source, sha256_prefix=resolved.sha256_prefix,
                           sha256=resolved.sha256)
        log.info("%s: weights from %s (loaded %s)", full, resolved.source, how)
    else:
        info = WeightsInfo(pretrained=False, source="random")
    pre = preprocessing_of(cfg)
    stages, head = _split_vit(model) if _is_vit(model) else _split_cnn(name, model)
    _check_split(name, model, stages, head, pre.input_size)
    out = _feature_dim(model, stages, pre.input_size)
    token_pool = None
    if len(out) == 2:  # (tokens, channels): a transformer
        token_pool = (getattr(model, "global_pool", "token") or "token", int(getattr(model, "num_prefix_tokens", 1)))
        if token_pool[0] not in ("token", "avg"):
            raise ConfigError(f"{full}: global_pool {token_pool[0]!r} is not supported (token or avg)")
    bb = Backbone(name=full, stages=stages, classifier=head, feature_dim=int(out[-1] if token_pool else out[0]),
                  preprocessing=pre, weights=info, token_pool=token_pool)
    return bb.eval()
