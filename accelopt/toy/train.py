"""Train the toy generators (ToySD, ToyPixArt) and the toy CLIP scorer from scratch, seeded.

    python -m accelopt.toy.train generator --out runs/a --device cuda:0
    python -m accelopt.toy.train scorer --out runs/s --device cuda:1
    python -m accelopt.toy.train dit --out runs/d --device cuda:0

``generator`` trains the VAE, then the text encoder and UNet together (epsilon prediction, SD's
noise schedule, 10% empty captions for classifier-free guidance, an EMA of the weights), and
saves a StableDiffusionPipeline folder in float16 (``OUT/ToySD``). ``dit`` trains a small T5
encoder and a PixArt-layout transformer together the same way, on the latents of the shipped
ToySD's VAE (frozen: the same latent space, and no VAE stage) with PixArt's linear noise
schedule, and saves a PixArtAlphaPipeline folder in float16 (``OUT/ToyPixArt``). ``scorer``
trains an open_clip CLIP contrastively on its own draw of the data and saves an open_clip
``local-dir`` folder (``OUT/toy-clip``). Each writes ``train.json``: settings, loss curve,
seconds, versions.

Every batch is drawn from a seed derived from ``--seed`` and the step, on the CPU, so a rerun
draws the same data; GPU kernels are not bit-deterministic, so reruns agree within noise, not
bit for bit (docs/BENCHMARKS.md compares two runs). ``--max-seconds`` stops a stage early and
``--set`` changes recipe entries; either says so in the log and in ``train.json``
(``is_recipe``): such a run is not the recipe.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from accelopt.toy import models, shapes

__all__ = ["DIT", "GENERATOR", "SCORER", "batches", "main"]

# The recipes. Steps are fixed (not time budgets) so that a rerun is the same training. The
# UNet's learning rate follows a 14,000-step cosine schedule, stopped at step 3,000: the shipped
# weights come from a run planned for 14,000 steps that the device call's time limit stopped at
# step 3,011, and its twin (3,036 steps) gave the same figures (docs/BENCHMARKS.md).
GENERATOR = {
    "vae_steps": 2500,
    "vae_batch": 128,
    "vae_lr": 1e-3,
    "kl_weight": 1e-5,
    "steps": 3000,
    "schedule_steps": 14000,
    "batch": 256,
    "lr": 4e-4,
    "warmup": 500,
    "ema": 0.9995,
    "uncond": 0.1,
    "calibration_images": 1024,  # their latents set the VAE's scaling factor; 256 its PSNR
    "storage_check_prompts": 16,  # images compared before and after the float16 round trip
}
SCORER = {
    "steps": 5000,
    "batch": 512,
    "lr": 1e-3,
    "warmup": 300,
    "weight_decay": 0.1,
}
# ToyPixArt, sized for one device call of 10 minutes on one H100, a GPU nobody here has timed it
# on. The estimate, from FLOPs against ToySD's measured run: a ToySD step (batch 256: VAE encode,
# then text encoder + UNet forward and backward, about 3x forward) is 725 GFLOP and took 96 ms on
# an H200 (3,000 steps in 288 s); a ToyPixArt step is 571 GFLOP (0.79x: no UNet, a DiT forward of
# 0.57 GFLOP a sample at 16 caption tokens), so about 76 ms, or 300 s for 4,000 steps; up to 1.4x
# that on an H100 (less memory bandwidth) is 425 s. ``--max-seconds`` bounds what the estimate
# cannot. The cosine schedule ends at ``schedule_steps``, so a run stopped at step N can be
# restated as the recipe ``steps=N`` (as ToySD's was). A shorter EMA than ToySD's: a run this
# short still improves at its end.
DIT = {
    "vae": "ToySD",  # whose shipped VAE encodes the images (frozen, copied into the folder)
    "layers": models.DIT_LAYERS,  # the transformer's depth (a smoke test shrinks it)
    "steps": 4000,
    "schedule_steps": 4000,
    "batch": 256,
    "lr": 5e-4,
    "warmup": 500,
    "ema": 0.999,
    "uncond": 0.1,
    "storage_check_prompts": 16,
}
# Data streams: each model draws its own scenes (evaluation draws its real images with seeds of
# its own, accelopt.toy.evaluate.REAL_SEEDS).
STREAMS = {"generator": 1, "scorer": 2, "dit": 3}
LOG_EVERY = 100


def batches(
    size: int, *, stream: str, seed: int, device: torch.device, split: shapes.Split = "train"
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless (images in [-1, 1], captions) batches; batch k is drawn with its own seed."""
    base = (STREAMS[stream] * 1_000_003 + seed) * 1_000_003
    for k in range(1 << 62):
        images, captions = shapes.draw(size, seed=base + k, split=split, device=device)
        yield images * 2 - 1, captions


class Tokens:
    """Captions to token ids, cached (a training run sees a few thousand distinct captions).

    The toy CLIP tokenizer by default, padded to its 32 tokens; or ``tokenizer`` padded to
    ``length``.
    """

    def __init__(
        self, device: torch.device, tokenizer: Any = None, length: int | None = None
    ) -> None:
        self.tokenizer: Any = tokenizer if tokenizer is not None else models.tokenizer()
        self.length = length
        self.device = device
        self._cache: dict[str, list[int]] = {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.length, truncation=True
            ).input_ids
            self._cache.update(zip(missing, ids, strict=True))
        return torch.tensor([self._cache[c] for c in captions], device=self.device)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class _Log:
    def __init__(self, stage: str, steps: int, deadline: float | None) -> None:
        self.stage, self.steps, self.deadline = stage, steps, deadline
        self.start = time.perf_counter()
        self.curve: list[tuple[int, float]] = []
        self._sum, self._n = 0.0, 0
        self.stopped_at: int | None = None

    def step(self, step: int, loss: torch.Tensor) -> bool:
        """Record a loss; False once the time limit is reached (the stage then ends)."""
        if step % 10 == 0:  # a sync every step would cost more than the small models' steps
            self._sum, self._n = self._sum + loss.item(), self._n + 1
        if (step + 1) % LOG_EVERY == 0 or step + 1 == self.steps:
            mean = self._sum / max(1, self._n)
            self.curve.append((step + 1, round(mean, 5)))
            print(f"{self.stage} {step + 1}/{self.steps} loss {mean:.4f} "
                  f"{self.seconds:.0f}s", flush=True)  # fmt: skip
            self._sum, self._n = 0.0, 0
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.stopped_at = step + 1
            print(f"{self.stage}: stopped at step {step + 1} by --max-seconds", flush=True)
            return False
        return True

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def record(self) -> dict[str, Any]:
        return {
            "steps": self.stopped_at or self.steps,
            "stopped_early": self.stopped_at is not None,
            "seconds": round(self.seconds, 1),
            "loss_curve": self.curve,
        }


def train_vae(
    device: torch.device, seed: int, recipe: dict[str, Any], deadline: float | None
) -> tuple[Any, dict[str, Any]]:
    """An AutoencoderKL trained to reconstruct the shapes (MSE + a small KL term)."""
    torch.manual_seed(seed)
    vae: Any = models.vae()
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe["vae_lr"], weight_decay=0.0)
    steps = recipe["vae_steps"]
    log = _Log("vae", steps, deadline)
    data = batches(recipe["vae_batch"], stream="generator", seed=seed, device=device)
    for step, (x, _) in zip(range(steps), data, strict=False):
        for group in opt.param_groups:
            group["lr"] = recipe["vae_lr"] * _schedule(step, steps, 100)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction.float(), x) + recipe["kl_weight"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not log.step(step, loss.detach()):
            break
    vae.eval()
    # SD's convention: latents times scaling_factor have unit variance.
    with torch.no_grad(), _autocast(device):
        size = recipe["calibration_images"]
        x, _ = next(batches(size, stream="generator", seed=seed + 7, device=device))
        std = vae.encode(x).latent_dist.sample().float().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    with torch.no_grad():
        psnr = -10 * math.log10(F.mse_loss(vae(x[:256]).sample.clamp(-1, 1), x[:256]).item() / 4)
    return vae, {**log.record(), "scaling_factor": vae.config.scaling_factor, "psnr_db": psnr}


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():  # one fused call: hundreds of small tensors
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def train_generator(
    device: torch.device, seed: int, recipe: dict[str, Any], deadline: float | None
) -> tuple[Any, dict[str, Any]]:
    """VAE first, then text encoder + UNet on the frozen VAE's latents; returns the pipeline."""
    vae, vae_log = train_vae(device, seed, recipe, deadline)
    vae.requires_grad_(False)
    tokens = Tokens(device)
    torch.manual_seed(seed + 1)
    text_encoder: Any = models.text_encoder(len(tokens.tokenizer))
    unet: Any = models.unet()
    # SD's training noise schedule ("scaled_linear", 1,000 steps), as the DDIM config assumes.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2

    def predict(noisy: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return unet(noisy, t, text_encoder(ids)[0]).sample

    text, unet_ema, log = _train_denoiser(
        device, seed, recipe, deadline, "unet", (vae, tokens, text_encoder, unet), betas, predict
    )
    pipe = models.build_pipeline(vae, text, tokens.tokenizer, unet_ema)
    return pipe, {"vae": vae_log, "unet": log.record()}


def _train_denoiser(
    device: torch.device,
    seed: int,
    recipe: dict[str, Any],
    deadline: float | None,
    stage: str,
    parts: tuple[Any, Tokens, Any, Any],
    betas: torch.Tensor,
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[Any, Any, _Log]:
    """Train a text encoder and a denoiser together on the frozen VAE's latents (``parts``:
    vae, tokens, text encoder, denoiser): epsilon prediction under the noise schedule
    ``betas``, ``recipe["uncond"]`` of the captions dropped for guidance, clipped gradients,
    EMA copies. ``predict(noisy, t, ids)`` runs the two. Returns the EMA text encoder, the EMA
    denoiser and the log. Its draws come in the order ToySD's shipped run made them."""
    vae, tokens, text_encoder, denoiser = parts
    text_encoder.to(device).train()
    denoiser.to(device).train()
    ema = [copy.deepcopy(text_encoder).eval(), copy.deepcopy(denoiser).eval()]
    alphas = torch.cumprod(1 - betas, dim=0).float().to(device)
    params = [*text_encoder.parameters(), *denoiser.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.01)
    steps = recipe["steps"]
    log = _Log(stage, steps, deadline)
    g = torch.Generator().manual_seed(seed + 2)  # which captions are dropped, on the CPU
    data = batches(recipe["batch"], stream="generator" if stage == "unet" else stage,
                   seed=seed + 3, device=device)  # fmt: skip
    scale = vae.config.scaling_factor
    for step, (x, captions) in zip(range(steps), data, strict=False):
        for group in opt.param_groups:
            group["lr"] = recipe["lr"] * _schedule(
                step, recipe["schedule_steps"], recipe["warmup"]
            )
        drop = (torch.rand(len(captions), generator=g) < recipe["uncond"]).tolist()
        ids = tokens(["" if d else c for c, d in zip(captions, drop, strict=True)])
        with torch.no_grad(), _autocast(device):
            latents = vae.encode(x).latent_dist.sample().float() * scale
        eps = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(captions),), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * eps
        with _autocast(device):
            prediction = predict(noisy, t, ids)
        loss = F.mse_loss(prediction.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(recipe["ema"], (1 + step) / (10 + step))
        _ema_update(ema[0], text_encoder, decay)
        _ema_update(ema[1], denoiser, decay)
        if not log.step(step, loss.detach()):
            break
    return ema[0], ema[1], log


def _vae_weights(name: str) -> Path:
    """The weights file of a shipped toy pipeline's VAE; ValueError if it ships none."""
    from accelopt.pipelines import TOY_PIPELINES, toy_folder

    path = toy_folder(name) / "vae" / "diffusion_pytorch_model.safetensors"
    if name not in TOY_PIPELINES or not path.is_file():
        raise ValueError(f"recipe entry vae={name!r}: no VAE ships there; valid: ToySD")
    return path


def _shipped_vae(name: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The VAE of a shipped toy pipeline, frozen, and where it came from (its file's digest)."""
    import hashlib

    from diffusers import AutoencoderKL

    weights = _vae_weights(name)
    loaded: Any = AutoencoderKL.from_pretrained(weights.parent, dtype=torch.float32)
    # Built again from its settings alone: the loaded config remembers the folder it came from,
    # which the saved pipeline would then carry.
    vae: Any = AutoencoderKL.from_config(
        {k: v for k, v in loaded.config.items() if not k.startswith("_")}
    )
    vae.load_state_dict(loaded.state_dict())
    vae.to(device).eval().requires_grad_(False)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return vae, {"source": f"{name}/vae", "sha256": digest,
                 "scaling_factor": vae.config.scaling_factor}  # fmt: skip


# PixArt's training noise schedule: linear betas, 1,000 steps (its scheduler config's).
_PIXART_BETAS = (0.0001, 0.02)


def train_dit(
    device: torch.device, seed: int, recipe: dict[str, Any], deadline: float | None
) -> tuple[Any, dict[str, Any]]:
    """T5 encoder + PixArt transformer on the frozen shipped VAE's latents; returns the pipeline.

    Epsilon prediction, as PixArt's schedulers expect (``prediction_type="epsilon"``). Captions
    go in as the pipeline sends them: T5 ids with an attention mask that T5 and every
    cross-attention honour, an empty caption being ``</s>`` alone (the pipeline's negative
    prompt), shorter padding than the pipeline's (``models.DIT_CONTEXT_LENGTH``).
    """
    vae, vae_log = _shipped_vae(str(recipe["vae"]), device)
    tokens = Tokens(device, models.dit_tokenizer(), models.DIT_CONTEXT_LENGTH)
    pad = tokens.tokenizer.pad_token_id
    torch.manual_seed(seed + 1)
    text_encoder: Any = models.t5_encoder(len(tokens.tokenizer))
    transformer: Any = models.transformer(int(recipe["layers"]))
    betas = torch.linspace(*_PIXART_BETAS, 1000, dtype=torch.float64)
    no_micro_conditions = {"resolution": None, "aspect_ratio": None}  # as the pipeline at 64 px

    def predict(noisy: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != pad).long()
        return transformer(
            noisy,
            encoder_hidden_states=text_encoder(ids, attention_mask=mask)[0],
            encoder_attention_mask=mask,
            timestep=t,
            added_cond_kwargs=no_micro_conditions,
        ).sample

    text, dit, log = _train_denoiser(
        device, seed, recipe, deadline, "dit", (vae, tokens, text_encoder, transformer), betas,
        predict,
    )  # fmt: skip
    pipe = models.build_dit_pipeline(vae, text, tokens.tokenizer, dit)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("transformer", "text_encoder", "vae")}  # fmt: skip
    return pipe, {"vae": vae_log, "dit": log.record(), "parameters": counts}


def train_scorer(
    device: torch.device, seed: int, recipe: dict[str, Any], deadline: float | None
) -> tuple[Any, dict[str, Any]]:
    """An open_clip CLIP trained contrastively; captions equal within a batch count as matches."""
    import open_clip

    tokens = Tokens(device)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**models.scorer_config(len(tokens.tokenizer))).to(device).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    steps = recipe["steps"]
    log = _Log("scorer", steps, deadline)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    data = batches(recipe["batch"], stream="scorer", seed=seed, device=device)
    for step, (x, captions) in zip(range(steps), data, strict=False):
        for group in opt.param_groups:
            group["lr"] = recipe["lr"] * _schedule(step, steps, recipe["warmup"])
        x = _degrade(x, g)
        ids = tokens(captions)
        same = ids.unsqueeze(0).eq(ids.unsqueeze(1)).all(-1).float()
        targets = same / same.sum(1, keepdim=True)
        with _autocast(device):
            image, text, logit_scale = model(x, ids)[:3]
            logits = logit_scale * image.float() @ text.float().T
        loss = (_soft_ce(logits, targets) + _soft_ce(logits.T, targets)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if not log.step(step, loss.detach()):
            break
    return model.eval(), {"scorer": log.record()}


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def _degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise on some images, a blur on others: generated images are not clean renders."""
    b = x.shape[0]
    sigma = torch.rand(b, 1, 1, 1, generator=g, device=x.device) * 0.15
    noisy = torch.rand(b, 1, 1, 1, generator=g, device=x.device) < 0.5
    x = x + noisy * sigma * torch.randn(x.shape, generator=g, device=x.device)
    blur = torch.rand(b, 1, 1, 1, generator=g, device=x.device) < 0.3
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.where(blur, blurred, x).clamp(-1, 1)


def save_generator(pipe: Any, folder: Path, prompts: int, guidance: float = 5.0) -> dict[str, Any]:
    """The pipeline in float16 safetensors, tokenizer and scheduler included.

    Returns what storing in float16 costs: PSNR between images of the float32 weights and of
    the saved ones loaded back (both computed in float32), over ``prompts`` held-out prompts,
    and the bytes the folder takes.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    from accelopt.measure.metrics import psnr
    from accelopt.pipelines import call_defaults

    def images(p: Any) -> torch.Tensor:
        p.set_progress_bar_config(disable=True)
        captions = list(shapes.prompt_order("heldout")[:prompts])
        seeds = [torch.Generator().manual_seed(i) for i in range(len(captions))]
        return p(captions, num_inference_steps=20, guidance_scale=guidance, generator=seeds,
                 output_type="pt", **call_defaults(p)).images.float().cpu()  # fmt: skip

    device = pipe.device
    before = images(pipe)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # diffusers warns about every float16 cast and CPU placement
    try:
        pipe.to(torch.device("cpu"), torch.float16)
        pipe.save_pretrained(folder, safe_serialization=True)
        loaded = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32).to(device)
    finally:
        logging.set_verbosity(verbosity)
    values = sorted(psnr(before, images(loaded)))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {
        "fp16_storage_psnr_db": {"min": values[0], "median": values[len(values) // 2]},
        "folder_bytes": size,
    }


def save_scorer(model: Any, folder: Path) -> None:
    """An open_clip local-dir folder: config, float16 weights, tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = models.tokenizer()
    models.write_scorer_config(folder, len(tokenizer))
    state = {
        k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, folder / "open_clip_model.safetensors")
    tokenizer.save_pretrained(folder)


def main(argv: Sequence[str] | None = None) -> int:
    from accelopt.measure.environment import package_versions

    parser = argparse.ArgumentParser(
        prog="python -m accelopt.toy.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", choices=list(_MODELS))
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="stop training this long after the start"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe entries (a smoke test: --set steps=20 vae_steps=20)",
    )
    parser.add_argument("--force", action="store_true", help="replace what --out holds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    written, folder_name, train = _MODELS[args.model]
    recipe = dict(written)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in recipe:
            parser.error(f"unknown recipe entry {key!r}; valid: {', '.join(recipe)}")
        try:
            recipe[key] = type(recipe[key])(value)
        except ValueError:
            parser.error(f"recipe entry {key}={value!r}: expected {type(recipe[key]).__name__}")
    if args.model == "dit":
        try:
            _vae_weights(str(recipe["vae"]))
        except ValueError as err:
            parser.error(str(err))
    overrides = {k: v for k, v in recipe.items() if v != written[k]}
    if overrides:
        print(f"not the recipe: {overrides} set by --set", flush=True)
    folder = args.out / folder_name
    if not args.force and (folder.exists() or (args.out / "train.json").exists()):
        parser.error(
            f"{args.out} already holds a trained {args.model}; pass --force to replace it"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = None if args.max_seconds is None else time.perf_counter() + args.max_seconds
    model, log = train(device, args.seed, recipe, deadline)
    if args.model == "scorer":
        save_scorer(model, folder)
    else:
        guidance = 4.5 if args.model == "dit" else 5.0  # each pipeline's study guidance
        log.update(save_generator(model, folder, int(recipe["storage_check_prompts"]), guidance))
    stopped = any(isinstance(v, dict) and v.get("stopped_early") for v in log.values())
    record = {
        "model": args.model,
        "seed": args.seed,
        # The recipe as written, run to its last step: only then are these the shipped weights'.
        "is_recipe": not overrides and not stopped,
        "recipe": recipe,
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "versions": package_versions(["torch", "diffusers", "transformers", "open_clip_torch"]),
        **log,
    }
    (args.out / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


# Subcommand -> (its recipe as written, the folder it saves, what trains it).
_MODELS: dict[str, tuple[dict[str, Any], str, Any]] = {
    "generator": (GENERATOR, "ToySD", train_generator),
    "scorer": (SCORER, "toy-clip", train_scorer),
    "dit": (DIT, "ToyPixArt", train_dit),
}


if __name__ == "__main__":
    raise SystemExit(main())
