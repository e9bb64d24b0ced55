"""Easel against Diffusers on the same random-weight FLUX folder, run alternately in one process.

    python benchmarks/bench_vs_diffusers.py                    # CPU: ~70 M-parameter DiT, 256x256, 4 steps
    python benchmarks/bench_vs_diffusers.py --size full --device cuda --precision bf16 --resolution 1024 --steps 28

Prints the median seconds of each and the ratio Easel / Diffusers (below 1: Easel is faster). Speed does not
depend on weight values, so random weights time like a real checkpoint. `--size full` is FLUX.1-dev's DiT
(12 B parameters; the folder takes about 48 GB and a few minutes to write) with tiny text encoders and VAE.
"""

import argparse
import statistics
import time
from pathlib import Path

import diffusers
import torch

from easel import DiffGenerator
from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.server_args import PRECISIONS
from easel.testing import MEDIUM_FLUX_TRANSFORMER_CONFIG, TINY_FLUX_TRANSFORMER_CONFIG, build_flux_pipeline

FULL_FLUX_TRANSFORMER_CONFIG = {
    **TINY_FLUX_TRANSFORMER_CONFIG,  # keeps the tiny encoders' widths for the text projections
    **{key: value for key, value in vars(FluxDitConfig()).items() if key.startswith(("num_", "attention_"))},
    "axes_dims_rope": FluxDitConfig().axes_dims_rope,
}
SIZES = {"medium": MEDIUM_FLUX_TRANSFORMER_CONFIG, "full": FULL_FLUX_TRANSFORMER_CONFIG}


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
    parser.add_argument("--size", choices=SIZES, default="medium")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of every component, on both sides")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default="build/bench", help="where the random-weight folder is kept")
    args = parser.parse_args()

    folder = Path(args.cache_dir) / f"flux-{args.size}"
    if not (folder / "model_index.json").exists():
        print(f"writing {folder} ...", flush=True)
        build_flux_pipeline(folder, seed=0, variant="dev", transformer_config=SIZES[args.size])
    device, dtype = torch.device(args.device), PRECISIONS[args.precision]

    easel = DiffGenerator.from_pretrained(
        folder,
        device=args.device,
        dit_precision=args.precision,
        vae_precision=args.precision,
        text_encoder_precision=args.precision,
        progress_bar=False,
    )
    reference = diffusers.FluxPipeline.from_pretrained(folder, dtype=dtype).to(device)
    reference.set_progress_bar_config(disable=True)
    request = {"prompt": "a red circle on a blue background", "height": args.resolution, "width": args.resolution}
    request |= {"num_inference_steps": args.steps, "guidance_scale": 3.5}

    def run_easel():
        easel.generate(seed=0, output_type="np", **request)

    def run_diffusers():
        reference(generator=torch.Generator("cpu").manual_seed(0), output_type="np", **request)

    parameters = sum(p.numel() for p in easel.pipeline.get_module("transformer").parameters())
    print(
        f"FLUX {args.size} ({parameters / 1e6:.0f} M DiT parameters), {args.resolution}x{args.resolution}, "
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
