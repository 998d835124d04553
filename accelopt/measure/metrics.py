"""CLIP score (open_clip), the relative score loss a study constrains, and fidelity metrics.

CLIP score = 100 x cosine(image embedding, text embedding), per image. Not clamped at 0: with
random weights scores are often negative, and the loss below stays meaningful.

PSNR and SSIM compare accelerated images with the baseline images of the same seeds and prompts:
they measure how far an accelerator moves the output, which stays meaningful with random weights.
Both are torchmetrics' (checked against the hand-written versions they replaced, see each).
``ClipScorer.image_similarity`` is the cosine of two images' CLIP embeddings, from the scorer a
study already loads.

Learned metrics need weights that nothing here downloads. ``load_metric(name, weights, device)``
loads one from the file or folder the user names, else from a local cache, and otherwise raises
an ``AccelOptError`` naming the file it expected (never random weights, never a download).
``LEARNED`` lists them, with how each is called (``kind``) and its direction:

- ``lpips``, ``lpips-vgg``, ``lpips-squeeze``: ``m(a, b)``, a distance per image pair, lower is
  closer. Backbone: torchvision's ImageNet checkpoint (``alexnet-owt-7be5be79.pth``,
  ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``), else that file in
  ``torch.hub.get_dir()/checkpoints/`` ($TORCH_HOME/hub); the linear layers ship in torchmetrics.
- ``pickscore``: ``m(images, prompts)``, higher is preferred. A transformers folder, else
  ``yuvalkirstain/PickScore_v1`` and ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (processor) in the
  Hugging Face cache.
- ``hpsv2``, ``hpsv2.1``: ``m(images, prompts)``, higher is preferred. ``HPS_v2_compressed.pt`` or
  ``HPS_v2.1_compressed.pt``, else that file of ``xswu/HPSv2`` in the Hugging Face cache.
- ``imagereward``: not supported (its package pins timm 0.6.13); loading it says so.

The tests build these networks offline with random weights: they check the loading and the
arithmetic, not the published weights.

>>> lpips = load_metric("lpips", weights="alexnet-owt-7be5be79.pth")
>>> lpips(baseline_images, images)
[0.031, 0.052]
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from accelopt.errors import AccelOptError

__all__ = [
    "LEARNED",
    "ClipScorer",
    "HpsV2",
    "LearnedMetric",
    "Lpips",
    "PickScore",
    "hps_weights_path",
    "load_metric",
    "loss_bound",
    "lpips_weights_path",
    "prompt_losses",
    "psnr",
    "score_loss",
    "ssim",
]

TINY_CLIP = "accelopt-tiny-clip"  # a small open_clip config shipped with accelopt, random weights
TOY_CLIP = "accelopt-toy-clip"  # the scorer trained on the toy shapes, shipped with its weights


def score_loss(baseline: Sequence[float], scores: Sequence[float]) -> float:
    """Relative loss of the mean score: ``(mean(baseline) - mean(scores)) / |mean(baseline)|``.

    Positive when accelerated images score lower; 0.02 means 2% worse.

    >>> round(score_loss([30.0, 32.0], [29.0, 31.0]), 4)
    0.0323
    """
    if len(baseline) != len(scores) or not scores:
        raise ValueError("baseline and scores must be non-empty and of equal length")
    base = sum(baseline) / len(baseline)
    if base == 0:
        raise ValueError("the baseline's mean CLIP score is 0; a relative loss is undefined")
    return (base - sum(scores) / len(scores)) / abs(base)


def loss_bound(
    baseline: Sequence[float], scores: Sequence[float], z: float
) -> tuple[float, float]:
    """The score loss estimated from the first ``len(scores)`` prompts, and its lower bound.

    Per prompt, ``d_i = (baseline_i - score_i) / |mean(baseline)|`` (all baseline prompts in
    the mean), so with every prompt scored the estimate equals ``score_loss``. The lower bound
    is ``mean(d) - z * stdev(d) / sqrt(k)``, one-sided; with fewer than two prompts it is -inf.

    >>> loss_bound([10.0, 10.0, 10.0, 10.0], [9.0, 9.0], z=2.33)
    (0.1, 0.1)
    """
    d = prompt_losses(baseline, scores)
    estimate = sum(d) / len(d)
    if len(d) < 2:
        return estimate, -math.inf
    return estimate, estimate - z * statistics.stdev(d) / math.sqrt(len(d))


def prompt_losses(baseline: Sequence[float], scores: Sequence[float]) -> list[float]:
    """Each prompt's share of the score loss: ``(baseline_i - score_i) / |mean(baseline)|``.

    ``scores`` may cover only the first prompts; their mean is the loss on those prompts, and
    with every prompt scored it equals ``score_loss``.

    >>> prompt_losses([10.0, 30.0], [10.0, 25.0])
    [0.0, 0.25]
    """
    if not 0 < len(scores) <= len(baseline):
        raise ValueError("need between 1 and len(baseline) scores")
    base = abs(sum(baseline) / len(baseline))
    if base == 0:
        raise ValueError("the baseline's mean CLIP score is 0; a relative loss is undefined")
    return [(b - s) / base for b, s in zip(baseline, scores, strict=False)]


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> list[float]:
    """Peak signal-to-noise ratio of each image pair, in dB: ``10 log10(range² / MSE)``.

    ``a`` and ``b`` are images (B, C, H, W), or one image (C, H, W), with values in
    ``[0, data_range]``; the mean squared error runs over channels and pixels, in float64.
    Identical images give ``inf``. torchmetrics computes it; it differed from the float64
    formula it replaced by at most 2.2e-6 dB (relative 4.5e-8: it takes ``log(10)`` and
    ``log(range)`` in float32) on the ToySD pairs described under ``ssim``.

    >>> a = torch.zeros(1, 3, 4, 4)
    >>> psnr(a, a + 0.5)
    [6.020599...]
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = _image_pair(a, b)
    values = peak_signal_noise_ratio(x, y, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return [float(v) for v in values.tolist()]


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, *, window: int = 11
) -> list[float]:
    """Structural similarity of each image pair (Wang et al. 2004), 1.0 for identical images.

    The paper's settings: a Gaussian window of 11 pixels with sigma 1.5, K1 = 0.01, K2 = 0.03,
    averaged over the positions where the window fits inside the image and over channels.
    Shapes as for ``psnr``; computed in float64. ``window`` must be 11 (kept for callers).

    torchmetrics computes the SSIM map. Its own mean also covers a 5 px border computed on
    reflect-padded pixels, which moved SSIM by up to 1.2e-2 from the hand-written valid-region
    mean this replaced; over the valid region its map gave that mean to 2.2e-14 (float64; 18
    pairs of ToySD 64 px images, DDIM 20 steps, 6 shapes prompts, the baseline against
    DeepCache 3/0, DeepCache 5/1 and ToMe 0.5). It clamps negative rounding-error variances to
    0, which leaves flat identical windows at 1 - 1e-13: identical images are set to 1.0.

    >>> a = torch.full((1, 3, 16, 16), 0.5)
    >>> ssim(a, a)
    [1.0]
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    if window != 11:
        raise ValueError(f"the SSIM window is 11 px (sigma 1.5); got {window}")
    x, y = _image_pair(a, b)
    height, width = x.shape[2:]
    if min(height, width) < window:
        raise ValueError(f"images of {height}x{width} px are smaller than the {window} px window")
    result = structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=1.5,
        data_range=data_range,
        k1=0.01,
        k2=0.03,
        reduction="none",
        return_full_image=True,
    )
    assert isinstance(result, tuple)
    pad = window // 2
    value = result[1][..., pad:-pad, pad:-pad].flatten(1).mean(dim=1)
    same = (x == y).flatten(1).all(dim=1)
    return torch.where(same, torch.ones_like(value), value).tolist()


def _image_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(
            f"images must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W); got shape {tuple(a.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    return a.to(torch.float64), b.to(a.device, torch.float64)


@dataclass
class ClipScorer:
    """Scores images against their prompts with one open_clip model, loaded once.

    ``model_name`` is an open_clip architecture (``ViT-H-14``; ``pretrained`` names its weights,
    ``""`` builds random weights from a fixed seed), an open_clip folder (``local-dir:PATH``,
    ``hf-hub:ORG/NAME``: config, weights and tokenizer from there), or ``accelopt-toy-clip``,
    the scorer trained on the toy shapes and shipped with accelopt.

    >>> scorer = ClipScorer("accelopt-toy-clip", "", torch.device("cpu"))
    >>> scorer(images, ["one large red circle in the center on a white background"])
    """

    model_name: str
    pretrained: str
    device: torch.device
    seed: int = 0

    def __post_init__(self) -> None:
        import open_clip

        config = resources.files("accelopt").joinpath("data/clip")
        open_clip.add_model_config(str(config))
        name = _open_clip_name(self.model_name)
        if not name.startswith(_SCHEMAS) and name not in open_clip.list_models():
            raise AccelOptError(
                f"metric: unknown CLIP model {self.model_name!r}; see open_clip.list_models() "
                f"(e.g. ViT-B-32, ViT-H-14, {TINY_CLIP}, {TOY_CLIP}, local-dir:PATH)"
            )
        pretrained = None if name.startswith(_SCHEMAS) else self.pretrained or None
        try:
            with torch.random.fork_rng(devices=[]), _quiet_root_logger():
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, OSError, ValueError) as err:  # unknown tag, missing folder or file
            raise AccelOptError(f"metric: {err}") from None
        self.model = model.eval()
        self.image_size = _image_size(preprocess)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of images (B, 3, H, W in [0, 1]) at the model's input size."""
        pixels = torch.nn.functional.interpolate(
            images.to(self.device, torch.float32),
            size=(self.image_size, self.image_size),
            mode="bicubic",
            align_corners=False,
        ).clamp(0, 1)
        pixels = (pixels - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(pixels.to(dtype), normalize=True).float()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings of texts."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image (B, 3, H, W in [0, 1]) against its prompt."""
        image, text = self.embed_images(images), self.embed_texts(prompts)
        return (100.0 * (image * text).sum(dim=-1)).tolist()

    def image_similarity(self, a: torch.Tensor, b: torch.Tensor) -> list[float]:
        """Cosine similarity of the CLIP image embeddings of each pair, in [-1, 1].

        ``a`` and ``b`` as for ``psnr`` (values in [0, 1]). Each set goes through the model as
        a batch of its own, as a trial embeds its images apart from the baseline's: one batch of
        both put each image's embedding at another batch position when the order was swapped,
        and with two or more CPU threads that changed its last bits. So the order of ``a`` and
        ``b`` never matters, and a pair of identical images gives exactly 1.0.

        >>> scorer.image_similarity(baseline_images, images)
        [0.9871, 0.9934]
        """
        x, y = _image_pair(a, b)
        u, v = self.embed_images(x).double(), self.embed_images(y).double()
        cosine = (u * v).sum(dim=-1).clamp(-1.0, 1.0)
        same = (x == y).flatten(1).all(dim=1).to(cosine.device)
        return torch.where(same, torch.ones_like(cosine), cosine).tolist()


_SCHEMAS = ("local-dir:", "hf-hub:")


def _open_clip_name(name: str) -> str:
    """The name open_clip loads: the shipped toy scorer is a local-dir folder in the package."""
    if name == TOY_CLIP:
        folder = resources.files("accelopt").joinpath(f"data/toy/{TOY_CLIP}")
        return f"local-dir:{folder}"
    return name


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # open_clip logs through the root logger: that random weights are random (we asked for them)
    # and, before raising, that a tag is unknown (our error says so in one line).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _image_size(preprocess: Any) -> int:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, tuple | list) and size:
            return int(size[0])
    raise AccelOptError("metric: cannot tell the CLIP model's input size from its transforms")


# --- learned metrics ----------------------------------------------------------------------------
# Nothing below downloads: each loader finds its weights in a file or folder the user names, else
# in a local cache, and otherwise raises an AccelOptError naming the file it expected.

LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_REPO = "xswu/HPSv2"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def lpips_weights_path(net: str = "alex", weights: str | os.PathLike[str] | None = None) -> Path:
    """The torchvision ImageNet checkpoint that LPIPS with backbone ``net`` loads.

    ``weights`` is that file (or a folder holding it under torchvision's file name); without it,
    torch hub's cache, ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub``), where
    torchvision keeps what it downloads. Raises ``AccelOptError`` naming the file when missing.

    >>> lpips_weights_path("alex").name
    'alexnet-owt-7be5be79.pth'
    """
    arch, file, url = _torchvision_checkpoint(net)
    if weights is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / file
        where = f"not in torch hub's cache (expected {path}); download {url} where there is "
        where += "network and put it there, or pass its path as the weights"
    else:
        path = Path(weights).expanduser()
        path = path / file if path.is_dir() else path
        where = f"no file {path}; download {url} where there is network and pass its path"
    if not path.is_file():
        raise AccelOptError(f"metric: LPIPS ({net}) needs torchvision's {arch} weights, {where}")
    return path


def _torchvision_checkpoint(net: str) -> tuple[str, str, str]:
    if net not in LPIPS_BACKBONES:
        raise AccelOptError(
            f"metric: unknown LPIPS network {net!r}; valid: {', '.join(LPIPS_BACKBONES)}"
        )
    import torchvision

    arch = LPIPS_BACKBONES[net]
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return arch, url.rsplit("/", 1)[-1], url


@dataclass
class Lpips:
    """LPIPS (Zhang et al. 2018), torchmetrics' network, with the user's backbone weights.

    ``net`` is ``alex``, ``vgg`` or ``squeeze``; ``weights`` the torchvision ImageNet checkpoint
    of that backbone (see ``lpips_weights_path``). The linear layers are the published ones,
    shipped in the torchmetrics wheel. Calling it gives each pair's distance, 0.0 for identical
    images; lower is closer.

    >>> lpips = Lpips("alex", "alexnet-owt-7be5be79.pth")
    >>> lpips(baseline_images, images)
    [0.031, 0.052]
    """

    net: str = "alex"
    weights: str | os.PathLike[str] | None = None
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        # The private module, not torchmetrics' LPIPS metric class: that one builds the backbone
        # with torchvision's weights=DEFAULT, which downloads when the hub cache lacks the file.
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        arch = LPIPS_BACKBONES.get(self.net)
        self.path = lpips_weights_path(self.net, self.weights)
        state = _read_checkpoint(self.path, f"torchvision {arch}")
        with torch.random.fork_rng(devices=[]):  # random weights, all replaced below
            model = _NoTrainLpips(pretrained=False, net=self.net, pnet_rand=True)  # type: ignore[arg-type]
        model.net.load_state_dict(_backbone_state(model.net.state_dict(), state, self.path, arch))
        lin_file = Path(inspect.getfile(_NoTrainLpips)).parent / "lpips_models" / f"{self.net}.pth"
        lins = torch.load(lin_file, map_location="cpu", weights_only=True)
        loaded = model.load_state_dict(lins, strict=False)
        missing = [k for k in loaded.missing_keys if k.startswith("lin") and "lins." not in k]
        if loaded.unexpected_keys or missing:  # the installed torchmetrics, not the user's file
            raise RuntimeError(f"{lin_file} does not fit torchmetrics' LPIPS ({self.net})")
        self.device = torch.device(self.device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> list[float]:
        """The LPIPS distance of each image pair (B, 3, H, W or 3, H, W; values in [0, 1])."""
        x, y = _image_pair(a, b)
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS takes RGB images (3 channels); got {x.shape[1]}")
        if min(float(x.min()), float(y.min())) < 0 or max(float(x.max()), float(y.max())) > 1:
            raise ValueError("LPIPS takes images with values in [0, 1]")
        pair = (t.to(self.device, torch.float32) for t in (x, y))
        distance = self.model(*pair, normalize=True).flatten().double()
        same = (x == y).flatten(1).all(dim=1).to(distance.device)
        return torch.where(same, torch.zeros_like(distance), distance).tolist()


def _backbone_state(
    wanted: dict[str, torch.Tensor], state: object, path: Path, arch: str | None
) -> dict[str, torch.Tensor]:
    """torchmetrics' LPIPS backbone slices, taken from a torchvision checkpoint's features.

    The slices keep torchvision's layer indices: ``slice1.0.weight`` (AlexNet, VGG) and
    ``slices.1.3.squeeze.weight`` (SqueezeNet) are ``features.0.weight`` and
    ``features.3.squeeze.weight``.
    """
    if not isinstance(state, dict):
        raise AccelOptError(
            f"metric: {path} holds no state dict (a torchvision {arch} checkpoint)"
        )
    source = {
        key: "features." + key.split(".", 2 if key.startswith("slices.") else 1)[-1]
        for key in wanted
    }
    missing = [name for name in source.values() if name not in state]
    if missing:
        raise AccelOptError(
            f"metric: {path} is not torchvision's {arch} checkpoint: it has no "
            f"{_keys(missing)} (keys: {_some_keys(state)})"
        )
    out = {}
    for key, name in source.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != wanted[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise AccelOptError(
                f"metric: {path} is not torchvision's {arch} checkpoint: {name} is {shape}, "
                f"{arch} has {tuple(wanted[key].shape)}"
            )
        out[key] = tensor
    return out


def hps_weights_path(version: str = "v2.1", weights: str | os.PathLike[str] | None = None) -> Path:
    """The HPSv2 checkpoint: ``weights`` (a file, or a folder holding it), else the HF cache.

    The cache is the Hugging Face hub's (``HF_HUB_CACHE``), where ``hf download xswu/HPSv2
    HPS_v2.1_compressed.pt`` puts it; nothing is downloaded here.

    >>> hps_weights_path("v2.0", "models/").name
    'HPS_v2_compressed.pt'
    """
    if version not in HPS_FILES:
        raise AccelOptError(f"metric: unknown HPSv2 version {version!r}; valid: v2.0, v2.1")
    file = HPS_FILES[version]
    if weights is not None:
        path = Path(weights).expanduser()
        path = path / file if path.is_dir() else path
        if not path.is_file():
            raise AccelOptError(
                f"metric: HPSv2 ({version}) needs {file} and {path} is not a file; download it "
                f"from the Hugging Face repo {HPS_REPO} where there is network"
            )
        return path
    cached = _hf_cached(HPS_REPO, file)
    if cached is None:
        raise AccelOptError(
            f"metric: HPSv2 ({version}) needs {file}, not in the Hugging Face cache (expected "
            f"{_hf_cache_hint(HPS_REPO, file)}); run `hf download {HPS_REPO} {file}` where "
            f"there is network, or pass the file as the weights"
        )
    return cached


@dataclass
class HpsV2:
    """Human Preference Score v2 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human
    choices; the score is the cosine of image and prompt embeddings (about 0.2-0.35; higher is
    preferred).

    ``weights`` is the checkpoint file (see ``hps_weights_path``); ``arch`` the open_clip
    architecture it fits, ViT-H-14 for the published ones. Images are resized to the model's
    input square, as ``ClipScorer`` does.

    >>> hps = HpsV2("HPS_v2.1_compressed.pt")
    >>> hps(images, ["a lighthouse at dusk", "a red cube"])
    [0.271, 0.248]
    """

    weights: str | os.PathLike[str] | None = None
    version: str = "v2.1"
    device: torch.device | str = "cpu"
    arch: str = "ViT-H-14"

    def __post_init__(self) -> None:
        self.path = hps_weights_path(self.version, self.weights)
        state = _read_checkpoint(self.path, "HPSv2")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise AccelOptError(f"metric: {self.path} holds no state dict (an HPSv2 checkpoint)")
        if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}  # saved under DDP
        self.device = torch.device(self.device)
        self.scorer = ClipScorer(self.arch, "", self.device)  # random weights, replaced below
        try:
            loaded = self.scorer.model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise AccelOptError(
                f"metric: {self.path} does not fit open_clip {self.arch}: {_one_line(err)}"
            ) from None
        if loaded.missing_keys or loaded.unexpected_keys:
            raise AccelOptError(
                f"metric: {self.path} does not fit open_clip {self.arch}: "
                f"{_key_summary(loaded.missing_keys, loaded.unexpected_keys)}"
            )
        self.scorer.model.eval()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The HPS of each image (B, 3, H, W in [0, 1]) against its prompt."""
        _check_pairs(images, prompts)
        image, text = self.scorer.embed_images(images), self.scorer.embed_texts(prompts)
        return (image * text).sum(dim=-1).tolist()


@dataclass
class PickScore:
    """PickScore (Kirstain et al. 2023): a CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences;
    the score is ``exp(logit_scale) x cosine(image, prompt)`` (about 18-23; higher is preferred).

    ``weights`` is a transformers CLIPModel folder or a hub id found in the Hugging Face cache
    (default ``yuvalkirstain/PickScore_v1``); ``processor`` likewise for the processor (default:
    the weights folder when it holds one, else ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Both
    load with ``local_files_only=True``; weights missing from the folder are an error, never
    random.

    >>> pick = PickScore("models/PickScore_v1")
    >>> pick(images, ["a lighthouse at dusk", "a red cube"])
    [21.3, 19.8]
    """

    weights: str | os.PathLike[str] | None = None
    processor: str | os.PathLike[str] | None = None
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        from transformers import AutoProcessor, CLIPModel

        model_dir = _hf_folder(self.weights or PICKSCORE_MODEL, ("config.json",), "PickScore")
        source = self.processor
        if source is None:
            has_processor = any((model_dir / f).is_file() for f in _PROCESSOR_FILES)
            source = model_dir if has_processor else PICKSCORE_PROCESSOR
        processor_dir = _hf_folder(source, _PROCESSOR_FILES, "PickScore's processor")
        try:
            loaded: Any = CLIPModel.from_pretrained(
                model_dir, local_files_only=True, output_loading_info=True
            )
            self.transforms = AutoProcessor.from_pretrained(processor_dir, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as err:  # no weights file, a broken config
            raise AccelOptError(f"metric: PickScore: {_one_line(err)}") from None
        model, info = loaded
        absent = list(info.get("missing_keys", ())) + list(info.get("mismatched_keys", ()))
        if absent:  # transformers would have made them random
            names = [str(k[0] if isinstance(k, tuple) else k) for k in absent]
            raise AccelOptError(
                f"metric: PickScore: {model_dir} has no weights for {_keys(names)}"
            )
        self.device = torch.device(self.device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The PickScore of each image (B, 3, H, W in [0, 1]) against its prompt."""
        _check_pairs(images, prompts)
        pixels = self.transforms.image_processor(
            images=list(images.float().clamp(0, 1).cpu()), do_rescale=False, return_tensors="pt"
        )["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        image = _features(
            self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        )
        tokens = self.transforms.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        ).to(self.device)
        text = _features(self.model.get_text_features(**tokens))
        cosine = (image * text).sum(dim=-1) / (image.norm(dim=-1) * text.norm(dim=-1))
        return (self.model.logit_scale.exp().float() * cosine).tolist()


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns the projected embeddings as an output's pooler_output.
    tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
    return tensor.float()


def _image_reward(weights: object, device: object) -> Any:
    raise AccelOptError(
        "metric: ImageReward is not supported: its package (image-reward 1.5) pins timm==0.6.13 "
        "and fairscale==0.4.13, which conflict with accelopt's timm 1.0.31 (open_clip); use "
        "pickscore or hpsv2"
    )


@dataclass(frozen=True)
class LearnedMetric:
    """One entry of ``LEARNED``: how a learned metric is called and loaded.

    ``kind`` is ``pair`` (``metric(a, b)``: a distance between accelerated and baseline images)
    or ``prompt`` (``metric(images, prompts)``: a score per image); ``higher_is_better`` gives
    its direction; ``weights`` says in words which file it needs.
    """

    kind: Literal["pair", "prompt"]
    higher_is_better: bool
    weights: str
    load: Callable[[str | os.PathLike[str] | None, torch.device], Any]


LEARNED: dict[str, LearnedMetric] = {
    "lpips": LearnedMetric(
        "pair", False, "torchvision's alexnet-owt-7be5be79.pth",
        lambda w, d: Lpips("alex", w, d),
    ),
    "lpips-vgg": LearnedMetric(
        "pair", False, "torchvision's vgg16-397923af.pth", lambda w, d: Lpips("vgg", w, d)
    ),
    "lpips-squeeze": LearnedMetric(
        "pair", False, "torchvision's squeezenet1_1-b8a52dc0.pth",
        lambda w, d: Lpips("squeeze", w, d),
    ),
    "pickscore": LearnedMetric(
        "prompt", True, f"the {PICKSCORE_MODEL} folder and {PICKSCORE_PROCESSOR}'s processor",
        lambda w, d: PickScore(w, device=d),
    ),
    "hpsv2": LearnedMetric(
        "prompt", True, f"{HPS_REPO}'s {HPS_FILES['v2.0']}",
        lambda w, d: HpsV2(w, "v2.0", d),
    ),
    "hpsv2.1": LearnedMetric(
        "prompt", True, f"{HPS_REPO}'s {HPS_FILES['v2.1']}",
        lambda w, d: HpsV2(w, "v2.1", d),
    ),
    "imagereward": LearnedMetric("prompt", True, "not supported", _image_reward),
}  # fmt: skip


def load_metric(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> Any:
    """Load the learned metric ``name`` (a key of ``LEARNED``) from ``weights`` or its cache.

    Raises ``AccelOptError`` for an unknown name, and for missing or unfitting weights naming
    the file expected.

    >>> load_metric("lpips", "alexnet-owt-7be5be79.pth")(baseline_images, images)
    [0.031, 0.052]
    """
    if name not in LEARNED:
        raise AccelOptError(
            f"metric: unknown learned metric {name!r}; valid: {', '.join(LEARNED)}"
        )
    return LEARNED[name].load(weights, torch.device(device))


def _read_checkpoint(path: Path, what: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file: any failure to parse it is the file's
        raise AccelOptError(
            f"metric: cannot read {path} as a {what} checkpoint: {_one_line(err)}"
        ) from None


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hf_folder(source: str | os.PathLike[str], markers: tuple[str, ...], what: str) -> Path:
    """A local folder holding one of ``markers``, or the HF cache's snapshot of a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not any((path / m).is_file() for m in markers):
            raise AccelOptError(f"metric: {what}: no {path / markers[0]}")
        return path
    repo = str(source)
    if not _REPO_ID.fullmatch(repo):
        raise AccelOptError(f"metric: {what}: no folder {path} (expected {path / markers[0]})")
    for marker in markers:
        cached = _hf_cached(repo, marker)
        if cached is not None:
            return cached.parent
    raise AccelOptError(
        f"metric: {what}: {repo} is neither a folder nor in the Hugging Face cache (expected "
        f"{_hf_cache_hint(repo, markers[0])}); run `hf download {repo}` where there is network, "
        f"or pass a local folder"
    )


def _hf_cached(repo: str, file: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file)
    return Path(found) if isinstance(found, str) else None


def _hf_cache_hint(repo: str, file: str) -> str:
    from huggingface_hub import constants

    folder = "models--" + repo.replace("/", "--")
    return f"{constants.HF_HUB_CACHE}/{folder}/snapshots/<revision>/{file}"


def _check_pairs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W); got shape {tuple(images.shape)}")
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _some_keys(state: dict[Any, Any]) -> str:
    keys = [str(k) for k in list(state)[:3]]
    return ", ".join(keys) + (" ..." if len(state) > 3 else "") if keys else "none"


def _key_summary(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    parts = [f"missing {_keys(missing)}"] if missing else []
    return "; ".join([*parts, f"unexpected {_keys(unexpected)}"] if unexpected else parts)


def _keys(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more
