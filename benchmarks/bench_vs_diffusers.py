"""Easel against Diffusers and SGLang Diffusion on the same random-weight folder (FLUX or Wan), run alternately.

    python benchmarks/bench_vs_diffusers.py                    # CPU: ~70 M-parameter FLUX DiT, 256x256, 4 steps
    python benchmarks/bench_vs_diffusers.py --repeats 2 --no-sglang    # quicker, Easel and Diffusers only
    python benchmarks/bench_vs_diffusers.py --enable-torch-compile     # Easel compiled (regional), the peers eager
    python benchmarks/bench_vs_diffusers.py --size full --device cuda --precision bf16 --resolution 1024 --steps 28
    python benchmarks/bench_vs_diffusers.py --model wan        # CPU: ~70 M-parameter Wan DiT, 17x256x256, 4 steps, CFG
    bash ../shared/tools/sglang-cpu-venv.sh /tmp/sglvenv       # once (minutes, network): adds SGLang's column

Easel and Diffusers run in this process; SGLang Diffusion's own FLUX pipeline (FLUX only) runs in its own environment
(`--sglang-python`, default /tmp/sglvenv/bin/python; see sglang_engine.py) as a separate process, with as many torch
threads as Easel, the embedded guidance as its embedded_cfg_scale server argument and its text-encoding cache off.
Without that environment (or with `--no-sglang`) the reason is printed and the Diffusers ratio stands alone. After one
warm-up run of each engine (SGLang's first request is slow), each of `--repeats` rounds runs every engine once, the
order rotated every round, so that drift on a shared machine affects all alike.

Prints the median seconds of each and the ratios Easel / Diffusers and Easel / SGLang (below 1: Easel is faster).
SGLang's seconds are measured inside its process (`generate` alone); the wall time seen from here, 5-7 ms of IPC
more, is printed beside them, and the ratio uses the inside time. Then the max abs difference of Easel's image against
each peer's for the same seed (0), which shows the comparison is like for like: Easel's and Diffusers' pixels agree,
and SGLang's stay within a few 1e-6 of them in fp32. Speed does not depend on weight values, so random weights time
like a real checkpoint. `--size full` is FLUX.1-dev's DiT (12 B parameters; the folder takes about 48 GB and a few
minutes to write) with tiny text encoders and VAE. The Wan case is Wan2.1-T2V with a 16-layer, 512-wide DiT, a tiny
UMT5 and a 3-wide VAE (so the DiT dominates), run with classifier-free guidance (5.0 and a negative prompt) as Wan
runs.
"""

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from sglang_engine import (
    BUILD_SCRIPT,
    DEFAULT_SGLANG_PYTHON,
    SGLangEngine,
    SGLangError,
    sglang_python_unavailable,
)

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

    def sglang_request(self, args: argparse.Namespace) -> dict[str, Any] | None:
        """SGLang's sampling_params_kwargs for the same request (seed aside), or None: no SGLang column."""
        return None

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

    def sglang_request(self, args: argparse.Namespace) -> dict[str, Any] | None:
        request = self.request(args)  # its guidance_scale is SGLang's embedded_cfg_scale server argument
        return {key: request[key] for key in ("prompt", "height", "width", "num_inference_steps")}


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


@dataclass
class Side:
    """What one engine did: the seconds the ratios use, SGLang's wall seconds seen from here, its last image."""

    seconds: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    image: np.ndarray | None = None


def first_output(output: Any) -> np.ndarray:
    """The first image (H, W, C) or video (F, H, W, C) of an Easel result or a Diffusers output, as float32."""
    frames = getattr(output, "frames", None)
    return np.asarray(output.images if frames is None else frames, dtype=np.float32)[0]


def timed(run, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, output


def start_sglang(args: argparse.Namespace, model: Model, folder: Path) -> tuple[SGLangEngine | None, str]:
    """SGLang's engine on `folder` and a line saying what runs, or None and why it does not."""
    if args.no_sglang:
        return None, "not run (--no-sglang)"
    if model.sglang_request(args) is None:
        return None, f"not run: its column is for --model flux only (SGLang's own FLUX pipeline), not {args.model}"
    python = Path(args.sglang_python)
    reason = sglang_python_unavailable(python)
    if reason is not None:
        return None, f"not run: {reason}"
    threads = torch.get_num_threads()  # Easel's (and Diffusers', in this process)
    print(f"starting SGLang ({python}, threads {threads}) ...", flush=True)
    try:
        engine = SGLangEngine(
            python,
            folder,
            embedded_cfg=model.request(args)["guidance_scale"],  # a server argument in SGLang
            threads=threads,
            precision=args.precision,
        )
    except SGLangError as exc:
        return None, f"not run: SGLang did not start: {exc}"
    line = f"SGLang {engine.version} ({python}), threads {threads}, started in {engine.start_seconds:.0f} s"
    if args.device != "cpu":
        line += f"; not on --device {args.device}: it runs where its environment's torch does (a CPU build: the CPU)"
    return engine, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="flux")
    parser.add_argument("--size", choices=SIZES, default="medium", help="full: FLUX only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of every component, on every side")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=17, help="Wan only")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7, help="rounds, each running every engine once, alternating")
    parser.add_argument("--cache-dir", default="build/bench", help="where the random-weight folder is kept")
    parser.add_argument(
        "--sglang-python",
        default=str(DEFAULT_SGLANG_PYTHON),
        help=f"the Python of an SGLang environment (build one with `bash {BUILD_SCRIPT} DIR`); FLUX only",
    )
    parser.add_argument("--no-sglang", action="store_true", help="Easel and Diffusers only")
    parser.add_argument(
        "--enable-torch-compile", action="store_true", help="Easel with regional torch.compile (the peers stay eager)"
    )
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
        enable_torch_compile=args.enable_torch_compile,
    )
    reference = model.reference_cls.from_pretrained(folder, dtype=dtype).to(device)
    reference.set_progress_bar_config(disable=True)
    request = model.request(args)
    parameters = sum(p.numel() for p in easel.pipeline.get_module("transformer").parameters())
    print(
        f"{model.label} {args.size} ({parameters / 1e6:.0f} M DiT parameters), {model.describe(args)}, "
        f"{args.steps} steps, {args.precision} on {device}, threads {torch.get_num_threads()}"
        + (", Easel with regional torch.compile" if args.enable_torch_compile else ""),
        flush=True,
    )
    sglang, sglang_line = start_sglang(args, model, folder)
    if sglang is not None:
        print(sglang_line, flush=True)

    def run_easel() -> tuple[float, np.ndarray, float | None]:
        seconds, result = timed(lambda: easel.generate(seed=0, output_type="np", **request), device)
        return seconds, first_output(result), None

    def run_diffusers() -> tuple[float, np.ndarray, float | None]:
        generator = torch.Generator("cpu").manual_seed(0)
        seconds, output = timed(lambda: reference(generator=generator, output_type="np", **request), device)
        return seconds, first_output(output), None

    def run_sglang() -> tuple[float, np.ndarray, float | None]:
        reply = sglang.generate({**model.sglang_request(args), "seed": 0, "enable_cache_dit": False})
        return reply.seconds, reply.image, reply.wall

    runners = {"easel": run_easel, "diffusers": run_diffusers}
    if sglang is not None:
        runners["sglang"] = run_sglang
    sides = {name: Side() for name in runners}

    def run(name: str, record: bool) -> None:
        nonlocal sglang_line
        try:
            seconds, image, wall = runners[name]()
        except SGLangError as exc:  # SGLang's failure drops its column, not the benchmark
            sglang_line = f"failed: {exc}"
            print(f"SGLang {sglang_line}", flush=True)
            del runners[name], sides[name]
            return
        if record:
            sides[name].seconds.append(seconds)
            if wall is not None:
                sides[name].wall.append(wall)
            sides[name].image = image

    try:
        for name in list(runners):  # warm-up: lazy initialization, allocator, kernel selection; SGLang's first is slow
            run(name, record=False)
        for index in range(args.repeats):  # alternating, the order rotated every round
            names = list(runners)
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                if name in runners:
                    run(name, record=True)
    finally:
        if sglang is not None:
            sglang.close()
    report(sides, args.repeats, sglang_line)


def report(sides: dict[str, Side], repeats: int, sglang_line: str) -> None:
    def listed(values: list[float]) -> str:
        return ", ".join(f"{value:.3f}" for value in values)

    medians = {name: statistics.median(side.seconds) for name, side in sides.items() if side.seconds}
    rounds = f"{repeats} round{'' if repeats == 1 else 's'}"
    print(f"{rounds} of {', '.join(sides)} (order rotated every round), after one warm-up run each")
    for name, side in sides.items():
        line = f"{name:<9} median {medians[name]:.3f} s  ({listed(side.seconds)})"
        if side.wall:
            ipc = statistics.median(wall - inside for wall, inside in zip(side.wall, side.seconds, strict=True))
            line += (
                f"  inside its process; seen from here median {statistics.median(side.wall):.3f} s "
                f"({listed(side.wall)}), IPC +{ipc * 1e3:.0f} ms"
            )
        print(line)
    for name in sides:
        if name != "easel":
            note = "  (SGLang's time inside its process, IPC excluded)" if name == "sglang" else ""
            print(f"ratio easel/{name + ':':<10} {medians['easel'] / medians[name]:.3f}{note}")
    if "sglang" not in sides:
        print(f"no easel/sglang ratio: SGLang {sglang_line}")
    easel = sides["easel"].image
    differences = []
    for name, side in sides.items():
        if name != "easel":
            if side.image.shape != easel.shape:
                differences.append(f"{name} shape {side.image.shape} against {easel.shape}")
            else:
                differences.append(f"{name} {float(np.abs(side.image - easel).max()):.2g}")
    print(f"max abs pixel difference from Easel's image, same seed: {', '.join(differences)}")


if __name__ == "__main__":
    main()
