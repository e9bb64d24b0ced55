"""Easel against Diffusers on the same random-weight folder (FLUX or Wan), run alternately in one process.

    python benchmarks/bench_vs_diffusers.py                    # CPU: ~70 M-parameter FLUX DiT, 256x256, 4 steps
    python benchmarks/bench_vs_diffusers.py --size full --device cuda --precision bf16 --resolution 1024 --steps 28
    python benchmarks/bench_vs_diffusers.py --model wan        # CPU: ~70 M-parameter Wan DiT, 17x256x256, 4 steps, CFG

Prints the median seconds of each and the ratio Easel / Diffusers (below 1: Easel is faster). Speed does not
depend on weight values, so random weights time like a real checkpoint. `--size full` is FLUX.1-dev's DiT
(12 B parameters; the folder takes about 48 GB and a few minutes to write) with tiny text encoders and VAE. The Wan
case is Wan2.1-T2V with a 16-layer, 512-wide DiT, a tiny UMT5 and a 3-wide VAE (so the DiT dominates), run with
classifier-free guidance (5.0 and a negative prompt) as Wan runs.
"""

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch

from easel import DiffGenerator
from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.server_args import PRECISIONS
from easel.testing import MEDIUM_FLUX_TRANSFORMER_CONFIG, TINY_FLUX_TRANSFORMER_CONFIG, build_flux_pipeline
from easel.testing.wan import MEDIUM_WAN_TRANSFORMER_CONFIG, build_wan_t2v_pipeline

FULL_FLUX_TRANSFORMER_CONFIG = {
    **TINY_FLUX_TRANSFORMER_CONFIG,  # keeps the tiny encoders' widths for the text projections
    **{key: value for key, value in vars(FluxDitConfig()).items() if key.startswith(("num_", "attention_"))},
    "axes_dims_rope": FluxDitConfig().axes_dims_rope,
}


@dataclass(frozen=True)
class Model:
    """One benchmark case: how to write its folder, which Diffusers pipeline loads it, what one request asks."""

    label: str
    build: Any  # (folder, transformer_config) -> folder
    reference_cls: type
    sizes: dict[str, dict[str, Any]]

    def request(self, args: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, args: argparse.Namespace) -> str:
        return f"{args.resolution}x{args.resolution}"


class Flux(Model):
    def request(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "prompt": "a red circle on a blue background",
            "height": args.resolution,
            "width": args.resolution,
            "num_inference_steps": args.steps,
            "guidance_scale": 3.5,
        }


class Wan(Model):
    def request(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "prompt": "a red circle moving across a blue background",
            "negative_prompt": "blurry, low quality, static",
            "num_frames": args.frames,
            "height": args.resolution,
            "width": args.resolution,
            "num_inference_steps": args.steps,
            "guidance_scale": 5.0,
        }

    def describe(self, args: argparse.Namespace) -> str:
        return f"{args.frames}x{args.resolution}x{args.resolution}, CFG 5.0"


MODELS: dict[str, Model] = {
    "flux": Flux(
        label="FLUX",
        build=lambda folder, config: build_flux_pipeline(folder, seed=0, variant="dev", transformer_config=config),
        reference_cls=diffusers.FluxPipeline,
        sizes={"medium": MEDIUM_FLUX_TRANSFORMER_CONFIG, "full": FULL_FLUX_TRANSFORMER_CONFIG},
    ),
    "wan": Wan(
        label="Wan2.1-T2V",
        build=lambda folder, config: build_wan_t2v_pipeline(folder, seed=0, transformer_config=config),
        reference_cls=diffusers.WanPipeline,
        sizes={"medium": MEDIUM_WAN_TRANSFORMER_CONFIG},
    ),
}
SIZES = sorted({size for model in MODELS.values() for size in model.sizes})


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="flux")
    parser.add_argument("--size", choices=SIZES, default="medium", help="full: FLUX only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of every component, on both sides")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=17, help="Wan only")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default="build/bench", help="where the random-weight folder is kept")
    args = parser.parse_args()
    model = MODELS[args.model]
    if args.size not in model.sizes:
        parser.error(f"--size {args.size} is not available for --model {args.model} (choose from {list(model.sizes)})")

    folder = Path(args.cache_dir) / f"{args.model}-{args.size}"
    if not (folder / "model_index.json").exists():
        print(f"writing {folder} ...", flush=True)
        model.build(folder, model.sizes[args.size])
    device, dtype = torch.device(args.device), PRECISIONS[args.precision]

    easel = DiffGenerator.from_pretrained(
        folder,
        device=args.device,
        dit_precision=args.precision,
        vae_precision=args.precision,
        text_encoder_precision=args.precision,
        progress_bar=False,
    )
    reference = model.reference_cls.from_pretrained(folder, dtype=dtype).to(device)
    reference.set_progress_bar_config(disable=True)
    request = model.request(args)

    def run_easel():
        easel.generate(seed=0, output_type="np", **request)

    def run_diffusers():
        reference(generator=torch.Generator("cpu").manual_seed(0), output_type="np", **request)

    parameters = sum(p.numel() for p in easel.pipeline.get_module("transformer").parameters())
    print(
        f"{model.label} {args.size} ({parameters / 1e6:.0f} M DiT parameters), {model.describe(args)}, "
        f"{args.steps} steps, {args.precision} on {device}, threads {torch.get_num_threads()}"
    )
    run_easel(), run_diffusers()  # warm-up: lazy initialization, allocator, kernel selection
    easel_times, diffusers_times = [], []
    for _ in range(args.repeats):
        easel_times.append(timed(run_easel, device))
        diffusers_times.append(timed(run_diffusers, device))
    easel_median, diffusers_median = statistics.median(easel_times), statistics.median(diffusers_times)
    print(f"easel     median {easel_median:.3f} s  ({', '.join(f'{t:.3f}' for t in easel_times)})")
    print(f"diffusers median {diffusers_median:.3f} s  ({', '.join(f'{t:.3f}' for t in diffusers_times)})")
    print(f"ratio easel/diffusers: {easel_median / diffusers_median:.3f}")


if __name__ == "__main__":
    main()
