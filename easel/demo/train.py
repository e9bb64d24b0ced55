"""Trains the demo model and writes it as a Diffusers `FluxPipeline` folder.

    python -m easel.demo.train --seed 0 --output easel/demo/model

The FLUX.1 architecture at a few million parameters: tokenizers that know the caption words, frozen CLIP and T5
encoders set so that each word keeps its own vector (`make_text_encoders_compositional`), a VAE trained first on the
scenes and on shapes of random colours (`sample_vae_scene`), then the DiT trained on the VAE's latents with the
rectified-flow objective that FLUX's scheduler samples. The decoder's fine-tuning runs in a second process beside the
DiT's training, so that 2 CPU cores finish in about 49 minutes; `--device cuda` trains on a GPU instead (the noise is
still drawn on the CPU, from the same seed). `--vae-from FOLDER` trains only the DiT, on the VAE of a folder already
trained. The same seed and thread count give the same weights on the CPU."""

import argparse
import concurrent.futures
import copy
import json
import logging
import math
import multiprocessing
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from easel.demo.scenes import render, sample_training_scene, sample_vae_scene, training_caption
from easel.runtime.pipelines.flux import flux_mu
from easel.testing.flux import FLUX_VARIANTS, TINY_FLUX_VAE_CONFIG
from easel.testing.seeding import seeded
from easel.testing.text_encoders import TEXT_ENCODER_HIDDEN_SIZE, build_clip_text_encoder, build_t5_encoder
from easel.testing.tokenizers import ENGLISH_WORD_COUNTS, build_clip_tokenizer, build_t5_tokenizer

logger = logging.getLogger(__name__)

# The caption words the built-in word list lacks, so that each is one token.
DEMO_WORD_COUNTS = {**ENGLISH_WORD_COUNTS, "centre": 20, "large": 40, "middle": 10, "cyan": 10}

# Short T5 window: the captions take at most 22 tokens, and the DiT attends over text and image tokens together.
MAX_SEQUENCE_LENGTH = 24
SAMPLING_DEFAULTS = {
    "height": 64,
    "width": 64,
    "num_inference_steps": 20,
    "max_sequence_length": MAX_SEQUENCE_LENGTH,
    # True CFG against the empty prompt (the DiT was trained with one caption in ten dropped): the colours and the
    # shapes follow the prompt more often (measured on random text encoders: seen shapes 62% -> 76%).
    "guidance_scale": 1.0,
    "true_cfg_scale": 3.0,
    "negative_prompt": "",
}

# The tiny test FLUX VAE's layout (8x compression, 16 latent channels, no quant convs) at widths that learn the
# scenes; its latent statistics are measured on them (`encode_latents`).
VAE_CONFIG = {
    **TINY_FLUX_VAE_CONFIG,
    "block_out_channels": (16, 32, 32, 32),
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
# About 3.4 M parameters: 3 double-stream and 6 single-stream blocks of width 128.
TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 3,
    "num_single_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "pooled_projection_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 12, 12),
}
# FLUX.1-dev's schedule: sigmas shifted by the image's token count.
SCHEDULER_CONFIG = FLUX_VARIANTS["dev"].scheduler_config


# T5's relative-position bucket (bidirectional, 8 buckets) of the key just before the query. (The next word instead
# measured the same: held-out colours 99%, shapes 35%.)
PREVIOUS_TOKEN_BUCKET = 1
_ROTATION_SEED = 123  # the previous word's rotation is part of the encoders' design, the same for every training seed


@torch.no_grad()
def make_text_encoders_compositional(pipeline: FluxPipeline) -> None:
    """Sets the frozen encoders so that each T5 token is its word plus the word before it, and CLIP pools nothing.

    Random encoders mix every word of a caption into every token, so a colour and shape never seen together give
    vectors the DiT never saw, and it draws the pair it knows instead. Here T5's first layer attends only to the
    previous word (its queries are zero, so the position bias alone decides), adding a fixed rotation of that word's
    vector to the token's own; every other sublayer adds nothing. So the shape's token and the background's carry
    their own colours. CLIP's pooled vector, a summary of the whole caption, is zero.
    """
    blocks = pipeline.text_encoder_2.encoder.block
    attention = blocks[0].layer[0].SelfAttention
    attention.q.weight.zero_()
    bias = torch.full_like(attention.relative_attention_bias.weight, -30.0)  # (buckets, heads)
    bias[PREVIOUS_TOKEN_BUCKET] = 30.0
    attention.relative_attention_bias.weight.copy_(bias)
    width = attention.v.weight.shape[1]
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(_ROTATION_SEED)))
    attention.v.weight.copy_(torch.eye(width))
    attention.o.weight.copy_(rotation)
    blocks[0].layer[1].DenseReluDense.wo.weight.zero_()
    for block in blocks[1:]:
        block.layer[0].SelfAttention.o.weight.zero_()
        block.layer[1].DenseReluDense.wo.weight.zero_()
    pipeline.text_encoder.final_layer_norm.weight.zero_()
    pipeline.text_encoder.final_layer_norm.bias.zero_()


def build_untrained_pipeline(seed: int) -> FluxPipeline:
    """The demo's components at their initial weights, each drawn from its own seed."""
    tokenizer, tokenizer_2 = build_clip_tokenizer(DEMO_WORD_COUNTS), build_t5_tokenizer(DEMO_WORD_COUNTS)
    with seeded(seed):
        text_encoder = build_clip_text_encoder(tokenizer)
    with seeded(seed + 1):
        text_encoder_2 = build_t5_encoder(tokenizer_2)
    with seeded(seed + 2):
        transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    with seeded(seed + 3):
        vae = AutoencoderKL(**VAE_CONFIG)
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    make_text_encoders_compositional(pipeline)
    return pipeline


def make_dataset(count: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
    """`count` rendered training scenes as (N, 3, 64, 64) floats in -1..1, and one caption each.

    Drawn exactly where and as large as the caption says (the VAE's scenes move a little): a caption then stands for
    one picture, which the small DiT learns to draw sharply instead of as the blur of many.
    """
    scenes = [sample_training_scene(rng, two_shape_fraction=0.15) for _ in range(count)]
    return _pixels([render(scene) for scene in scenes]), [training_caption(scene, rng) for scene in scenes]


def make_vae_dataset(count: int, rng: random.Random) -> torch.Tensor:
    """`count` rendered scenes for the VAE (`sample_vae_scene`: half of them in random colours)."""
    return _pixels([render(sample_vae_scene(rng), rng) for _ in range(count)])


def _pixels(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def _randn(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Normal noise drawn on the CPU (the generator's device), so that a seed draws the same noise on any device."""
    return torch.randn(shape, generator=generator).to(device)


def _batch(data: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return data[torch.randint(len(data), (batch_size,), generator=generator)].to(device)


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, steps: int, batch_size: int, generator: torch.Generator):
    """Reconstruction (L1 + MSE) with a tiny KL term: the latents stay close to a deterministic code of the image."""
    device = vae.device
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    vae.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, warmup=50)
        batch = _batch(pixels, batch_size, generator, device)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * _randn(posterior.mean.shape, generator, device)
        reconstruction = vae.decode(latents).sample
        error = reconstruction - batch
        loss = error.abs().mean() + error.pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval().requires_grad_(False)


def finetune_decoder(vae: AutoencoderKL, pixels: torch.Tensor, steps: int, batch_size: int, generator: torch.Generator):
    """Trains the decoder alone on the frozen encoder's latents: sharper edges (small triangles stop looking like
    circles) without moving the latent space the DiT was trained on."""
    device = vae.device
    optimizer = torch.optim.Adam(vae.decoder.parameters(), lr=1e-3)
    vae.decoder.train().requires_grad_(True)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3, warmup=50)
        batch = _batch(pixels, batch_size, generator, device)
        with torch.no_grad():
            posterior = vae.encode(batch).latent_dist
            latents = posterior.mean + posterior.std * _randn(posterior.mean.shape, generator, device)
        error = vae.decode(latents).sample - batch
        loss = error.abs().mean() + error.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("decoder step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """The posterior means, normalized as FLUX expects: (latents - shift) * scale has zero mean and unit variance.

    Sets the VAE's `shift_factor` and `scaling_factor` to match.
    """
    latents = torch.cat([vae.encode(chunk.to(vae.device)).latent_dist.mean for chunk in pixels.split(512)])
    shift, scale = latents.mean().item(), 1 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return (latents - shift) * scale


@torch.no_grad()
def encode_captions(pipeline: FluxPipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 sequence embeddings and CLIP pooled embeddings of each caption, as `FluxPipeline.encode_prompt` makes
    them at inference; each distinct caption is encoded once."""
    distinct = sorted(set(captions))
    index = {caption: i for i, caption in enumerate(distinct)}
    sequences, pooled = [], []
    for start in range(0, len(distinct), 256):
        chunk = distinct[start : start + 256]
        embeds, pooled_embeds, _ = pipeline.encode_prompt(chunk, max_sequence_length=MAX_SEQUENCE_LENGTH)
        sequences.append(embeds)
        pooled.append(pooled_embeds)
    rows = torch.tensor([index[caption] for caption in captions])
    return torch.cat(sequences)[rows], torch.cat(pooled)[rows]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) latents -> (B, h/2 * w/2, 64) tokens of 2x2 patches, as `FluxPipeline._pack_latents`."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def train_transformer(
    transformer: FluxTransformer2DModel,
    latents: torch.Tensor,
    text: tuple[torch.Tensor, torch.Tensor],
    empty_text: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    batch_size: int,
    generator: torch.Generator,
) -> FluxTransformer2DModel:
    """Rectified flow: x_t = (1 - t) x0 + t noise, the DiT predicts noise - x0; returns the EMA of the weights.

    t is logit-normal, shifted as FLUX's scheduler shifts the sampling sigmas at this image size, so that training
    spends its steps where sampling does. One caption in ten is replaced by the empty prompt, which lets
    `true_cfg_scale` with `negative_prompt=""` work.
    """
    device = transformer.device
    sequences, pooled = text
    tokens = pack(latents)
    _, _, h, w = latents.shape
    img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
    img_ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
    img_ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    img_ids = img_ids.reshape(-1, 3)
    txt_ids = torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device)
    shift = math.exp(flux_mu(tokens.shape[1], SCHEDULER_CONFIG))
    ema = copy.deepcopy(transformer).requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=5e-4, weight_decay=0.0)
    transformer.train().requires_grad_(True)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 5e-4, warmup=100)
        rows = torch.randint(len(tokens), (batch_size,), generator=generator).to(device)
        x0 = tokens[rows]
        dropped = (torch.rand(batch_size, generator=generator) < 0.1).to(device)
        sequence = torch.where(dropped[:, None, None], empty_text[0], sequences[rows])
        pooled_batch = torch.where(dropped[:, None], empty_text[1], pooled[rows])
        u = torch.sigmoid(_randn(batch_size, generator, device))
        t = shift * u / (1 + (shift - 1) * u)
        noise = _randn(x0.shape, generator, device)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        prediction = transformer(
            hidden_states=x_t,
            encoder_hidden_states=sequence,
            pooled_projections=pooled_batch,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        loss = (prediction - (noise - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(transformer.parameters()), 1 - decay)
        if step % 50 == 0 or step == steps - 1:
            logger.info("dit step %d/%d loss %.4f", step, steps, loss.item())
    return ema.eval()


def train(
    output: Path,
    seed: int,
    samples: int,
    vae_steps: int,
    decoder_steps: int,
    dit_steps: int,
    vae_batch: int,
    dit_batch: int,
    vae_from: Path | None = None,
    threads: int = 1,
    device: str = "cpu",
) -> Path:
    """Builds, trains and saves the demo pipeline at `output`; returns it. `vae_from`: a trained folder whose VAE
    is taken as it is (only the DiT trains). On the CPU the VAE trains on `threads` torch threads, the DiT on one
    fewer while the decoder's fine-tuning holds one."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    pipeline = build_untrained_pipeline(seed).to(device)
    pixels, captions = make_dataset(samples, random.Random(seed))
    logger.info("rendered %d scenes (%d distinct captions)", samples, len(set(captions)))
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        decoder = None
        if vae_from is None:
            train_vae(pipeline.vae, make_vae_dataset(samples, random.Random(seed + 1)), vae_steps, vae_batch, generator)
            # The decoder's fine-tuning leaves the encoder, hence the DiT's latents, as they are: it runs beside it.
            # A copy: the pool pickles its arguments in a background thread, moving their storage into shared memory
            # while this thread goes on reading the VAE.
            vae_state = {name: tensor.cpu().clone() for name, tensor in pipeline.vae.state_dict().items()}
            decoder = pool.submit(
                _finetuned_decoder,
                dict(pipeline.vae.config),
                vae_state,
                seed,
                samples,
                decoder_steps,
                vae_batch,
                device,
                logger.level,
            )
            torch.set_num_threads(max(1, threads - 1))
        else:
            pipeline.vae = AutoencoderKL.from_pretrained(vae_from / "vae").to(device)
        latents = encode_latents(pipeline.vae, pixels)
        text = encode_captions(pipeline, captions)
        empty_text = encode_captions(pipeline, [""])
        logger.info("vae trained and latents encoded after %.0f s", time.perf_counter() - start)
        pipeline.transformer = train_transformer(
            pipeline.transformer,
            latents,
            text,
            (empty_text[0][0], empty_text[1][0]),
            dit_steps,
            dit_batch,
            generator,
        )
        if decoder is not None:
            pipeline.vae.decoder.load_state_dict(decoder.result())
    pipeline.to("cpu").save_pretrained(output)
    index_path = output / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_easel_sampling_defaults"] = SAMPLING_DEFAULTS
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    logger.info("trained in %.0f s; wrote %s", time.perf_counter() - start, output)
    return output


def _finetuned_decoder(
    vae_config: dict,
    vae_state: dict[str, torch.Tensor],
    seed: int,
    samples: int,
    steps: int,
    batch_size: int,
    device: str,
    log_level: int,
) -> dict[str, torch.Tensor]:
    """`finetune_decoder` in a worker process: the same scenes, redrawn from the seed; returns the decoder's weights."""
    _configure_process(log_level)
    vae = AutoencoderKL.from_config(vae_config)
    vae.load_state_dict(vae_state)
    vae.to(device)
    pixels = make_vae_dataset(samples, random.Random(seed + 1))
    finetune_decoder(vae, pixels, steps, batch_size, torch.Generator().manual_seed(seed + 2))
    return {name: tensor.cpu() for name, tensor in vae.decoder.state_dict().items()}


def _configure_process(log_level: int, threads: int = 1) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(message)s")
    logger.setLevel(log_level)
    # One thread by default: the weights depend on the thread count, and two threads on a busy machine wait on each
    # other.
    torch.set_num_threads(threads)
    # Trained weights drift into subnormal floats, which x86 CPUs compute on many times slower.
    torch.set_flush_denormal(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=24000, help="rendered training scenes")
    parser.add_argument("--vae-steps", type=int, default=1800)
    parser.add_argument("--decoder-steps", type=int, default=2000, help="decoder-only steps after the VAE's")
    parser.add_argument("--dit-steps", type=int, default=3200)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--dit-batch", type=int, default=64)
    parser.add_argument("--vae-from", type=Path, help="a trained demo folder whose VAE is kept: only the DiT trains")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--device", default="cpu", help="where to train: cpu, or cuda on a GPU machine")
    args = parser.parse_args()
    _configure_process(logging.INFO)
    train(
        args.output,
        args.seed,
        args.samples,
        args.vae_steps,
        args.decoder_steps,
        args.dit_steps,
        args.vae_batch,
        args.dit_batch,
        args.vae_from,
        args.threads,
        args.device,
    )


if __name__ == "__main__":
    main()
