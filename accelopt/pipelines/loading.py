"""Build a diffusers pipeline from a name: a known model, a hub id, a local folder or a tiny one.

>>> pipe = load_pipeline("TinySD")                      # offline, random weights, fixed seed
>>> pipe = load_pipeline("SDXL", dtype="fp16")           # stabilityai/stable-diffusion-xl-base-1.0
>>> pipe = load_pipeline("SDXL", weights="random")       # the SDXL architecture, random weights
>>> pipe = load_pipeline("./my-finetune", device="cuda")  # any diffusers folder or hub id

Random full-size weights exist for timing where no weights can be downloaded: speed measured on
them is real, image quality is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from accelopt._types import Pipeline
from accelopt.errors import AccelOptError, choices
from accelopt.pipelines.tiny import TINY_PIPELINES, TINY_RESOLUTION, eval_mode, tiny_pipeline
from accelopt.progress import upstream_bars

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "MODELS",
    "TOY_PIPELINES",
    "ModelInfo",
    "call_defaults",
    "check_device",
    "denoiser",
    "family_of",
    "load_pipeline",
    "model_info",
    "resolve_device",
    "resolve_dtype",
    "toy_folder",
    "toy_shipped",
]

Family = Literal["sd", "sdxl", "pixart-alpha", "pixart-sigma"]
Weights = Literal["pretrained", "random"]

# Pipeline class -> family. The family decides which accelerators apply and which upstream
# entry points they use.
FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart-alpha",
    "PixArtSigmaPipeline": "pixart-sigma",
}


@dataclass(frozen=True)
class ModelInfo:
    """A model users name by its short name: where its weights live and its native resolution."""

    name: str
    family: Family
    hub_id: str | None
    resolution: int


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("SD1.5", "sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
    ModelInfo("SD2.1", "sd", "stabilityai/stable-diffusion-2-1", 768),
    ModelInfo("SDXL", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 1024),
    ModelInfo("PixArt-alpha", "pixart-alpha", "PixArt-alpha/PixArt-XL-2-1024-MS", 1024),
    ModelInfo("PixArt-Sigma", "pixart-sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024),
    ModelInfo("TinySD", "sd", None, TINY_RESOLUTION),
    ModelInfo("TinySDXL", "sdxl", None, TINY_RESOLUTION),
    ModelInfo("TinyPixArt", "pixart-alpha", None, TINY_RESOLUTION),
    # Trained here on the toy shapes (accelopt.toy); their folders ship inside the package.
    ModelInfo("ToySD", "sd", None, 64),
    ModelInfo("ToyPixArt", "pixart-alpha", None, 64),
)
_MODELS = {key.lower(): m for m in MODELS for key in (m.name, m.hub_id) if key}

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


TOY_PIPELINES = ("ToySD", "ToyPixArt")


def toy_folder(name: str) -> Path:
    """The shipped folder of a toy pipeline (``accelopt/data/toy/NAME``), a diffusers folder."""
    from importlib import resources

    return Path(str(resources.files("accelopt").joinpath(f"data/toy/{name}")))


def toy_shipped(name: str) -> bool:
    """Whether a toy pipeline's trained weights ship with this accelopt (a named toy may be
    known before its training run has been made).

    >>> toy_shipped("ToySD")
    True
    """
    return (toy_folder(name) / "model_index.json").is_file()


def model_info(name: str) -> ModelInfo | None:
    """The catalogue entry for a short name or its hub id (case-insensitive), else None."""
    return _MODELS.get(name.lower())


def resolve_device(device: str | None = None) -> torch.device:
    """``None`` means CUDA when there is one, else the CPU (diffusers' own habit)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AccelOptError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None


def check_device(device: str | None) -> None:
    """Refuse a ``device`` this machine lacks, as one line, before anything loads: the same for
    every command that takes ``--device`` (run, worker, export, sweep, report).

    >>> check_device("cpu")
    """
    if device is None:
        return
    import torch

    kind = resolve_device(device)  # a malformed name is refused with the valid ones
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise AccelOptError(f"--device {device}: this machine has no MPS device; use --device "
                            f"cpu or leave it out")  # fmt: skip
    if kind.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise AccelOptError(f"--device {device}: this machine has no CUDA device; use --device "
                            f"cpu or leave it out")  # fmt: skip
    count = torch.cuda.device_count()
    if kind.index is not None and kind.index >= count:
        plural = "" if count == 1 else "s"
        raise AccelOptError(f"--device {device}: this machine has {count} CUDA device{plural} "
                            f"(cuda:0 to cuda:{count - 1})")  # fmt: skip


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None`` means float16 on CUDA and float32 elsewhere, as diffusers' examples do."""
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise AccelOptError(f"unknown dtype {dtype!r}; valid: {choices(sorted(_DTYPES))}")
    return getattr(torch, name)


def family_of(pipe: Pipeline) -> Family:
    """The family of a loaded pipeline, from its class; unsupported classes are refused."""
    family = FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise AccelOptError(
            f"unsupported pipeline class {type(pipe).__name__}; supported: {choices(FAMILIES)}"
        )
    return family


def denoiser(pipe: Pipeline) -> Any:
    """The network a pipeline runs every step: its UNet, or its transformer (PixArt)."""
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def call_defaults(pipe: Pipeline) -> dict[str, Any]:
    """Arguments accelopt passes to every generation of this pipeline's family.

    PixArt snaps sizes to its aspect-ratio bins (which tiny sizes are not in) and cleans captions
    with BeautifulSoup; studies set the resolution themselves and write their own prompts.
    """
    if family_of(pipe).startswith("pixart"):
        return {"use_resolution_binning": False, "clean_caption": False}
    return {}


def load_pipeline(
    name: str,
    *,
    weights: Weights = "pretrained",
    dtype: str | None = None,
    device: str | None = None,
    variant: str | None = None,
    seed: int = 0,
) -> Pipeline:
    """Load or build a pipeline by short name (see ``MODELS``), hub id or local folder.

    ``weights="random"`` builds a known architecture from its config with seeded random weights
    (no download). Tiny pipelines always have random weights, in float32 on the CPU unless asked.
    """
    if weights not in ("pretrained", "random"):
        raise AccelOptError(f"unknown weights {weights!r}; valid: pretrained, random")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    info = model_info(name)
    if info is not None and info.name in TINY_PIPELINES:
        pipe = tiny_pipeline(info.name, seed=seed)
    elif info is not None and info.name in TOY_PIPELINES:
        if weights == "random":
            raise AccelOptError(f"{info.name} ships trained weights; drop --random-weights")
        if not toy_shipped(info.name):
            raise AccelOptError(
                f"{info.name}'s trained weights are not shipped yet ({toy_folder(info.name)} "
                f"holds no model_index.json); train them with python -m accelopt.toy.train and "
                f"put the folder there, or use ToySD"
            )
        pipe = _from_pretrained(str(toy_folder(info.name)), torch_dtype, variant)
    elif weights == "random":
        if info is None:
            valid = choices(m.name for m in MODELS if m.hub_id)
            raise AccelOptError(f"random weights need a known architecture, not {name!r}: {valid}")
        pipe = _random_pipeline(info, torch_device, torch_dtype, seed)
    else:
        pipe = _from_pretrained(info.hub_id if info else name, torch_dtype, variant)
    family_of(pipe)  # refuse unsupported classes before anyone patches them
    pipe.set_progress_bar_config(disable=True)
    quiet_empty_fp32_warning()
    return _move(pipe, torch_device, torch_dtype)


# diffusers 0.42.1 (ModelMixin.to) warns "There are modules in AutoencoderKL that should be kept
# in float32: []" at every cast with a dtype, even when the list is empty, and SDXL's pipeline
# casts its VAE to float32 and back at every fp16 generation (force_upcast): two lines per image,
# hundreds per study, about nothing. A warning that names modules still shows.
_EMPTY_FP32 = "that should be kept in float32: []."


class _EmptyFp32Filter:
    def filter(self, record: Any) -> bool:
        return _EMPTY_FP32 not in record.getMessage()


def quiet_empty_fp32_warning() -> None:
    """Drop diffusers' float32 warning where it names no module (once per process)."""
    import logging

    logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFp32Filter) for f in logger.filters):
        logger.addFilter(_EmptyFp32Filter())


def _move(pipe: Pipeline, device: torch.device, dtype: torch.dtype) -> Pipeline:
    from diffusers.utils import logging

    if pipe.device != device:
        pipe.to(device)
    if pipe.dtype != dtype:
        # diffusers warns on every cast after loading; a cast is what random and tiny weights need.
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            pipe.to(dtype=dtype)
        finally:
            logging.set_verbosity(verbosity)
    return pipe


def _from_pretrained(
    source: str | None, torch_dtype: torch.dtype, variant: str | None
) -> Pipeline:

    assert source is not None
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~"))
    if looks_local and not (path / "model_index.json").is_file():
        raise AccelOptError(f"{source!r} is not a diffusers pipeline folder (no model_index.json)")
    if not looks_local and source.count("/") != 1:
        valid = choices(m.name for m in MODELS)
        raise AccelOptError(
            f"unknown pipeline {source!r}; valid: {valid}, a hub id (org/name) or a local folder"
        )
    kwargs: dict[str, Any] = {"dtype": torch_dtype}  # diffusers 0.42 renamed torch_dtype
    if variant is not None:
        kwargs["variant"] = variant
    from diffusers import DiffusionPipeline

    where = str(path) if looks_local else source
    try:
        with upstream_bars():  # off a terminal, no "Loading pipeline components" bars in a log
            return DiffusionPipeline.from_pretrained(where, **kwargs)
    except OSError as err:  # not downloaded and no way to the hub, a broken folder, ...
        why = str(err).split(" (")[0].split("\n")[0]
        raise AccelOptError(
            f"{why}; download it first (hf download {source}) or pass a local folder; "
            f"--random-weights times a known architecture without weights"
        ) from None


def _random_pipeline(
    info: ModelInfo, device: torch.device, dtype: torch.dtype, seed: int
) -> Pipeline:
    import torch

    from accelopt.pipelines import architectures as _architectures

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        pipe = _architectures.build(info.name, device)
    return eval_mode(pipe)
