"""`easel generate`: one request from the command line, written to image files."""

import argparse
import json
from typing import Any

from easel.errors import InvalidInputError
from easel.runtime.cache.spec import KEYS, PRESETS, parse_cache_spec  # the standard library only: --help stays fast


def add_generate_parser(commands) -> None:
    parser = commands.add_parser("generate", help="generate images from a prompt", description=__doc__)
    parser.set_defaults(run=run_generate)
    model = parser.add_argument_group("model and engine")
    add_engine_arguments(model)
    add_lora_path_argument(model)

    request = parser.add_argument_group("request (unset values take the model's defaults)")
    request.add_argument("--prompt", required=True, help="what to draw")
    request.add_argument(
        "--image-path", nargs="+", metavar="PATH", help="input image(s) of an image-conditioned model (editing)"
    )
    request.add_argument("--negative-prompt", help="what to steer away from (with --true-cfg-scale > 1 on FLUX)")
    request.add_argument("--height", type=int, help="image height in pixels")
    request.add_argument("--width", type=int, help="image width in pixels")
    request.add_argument("--num-inference-steps", type=int, help="denoising steps")
    request.add_argument("--guidance-scale", type=float, help="guidance scale (embedded guidance on FLUX.1-dev)")
    request.add_argument("--true-cfg-scale", type=float, help="classifier-free guidance scale with a negative prompt")
    request.add_argument("--seed", type=int, help="random seed (default 0)")
    request.add_argument("--num-frames", type=int, help="frames of a video (video models)")
    request.add_argument("--fps", type=int, help="frames per second of a written video")
    request.add_argument(
        "--output-format", choices=["png", "jpeg", "webp", "mp4"], help="file type in an output folder (videos: mp4)"
    )
    request.add_argument("--num-outputs-per-prompt", type=int, help="images to generate")
    add_cache_argument(request, "for this request (default: none)")
    request.add_argument(
        "--quality-check",
        action="store_true",
        help="also run the exact path (no cache) with the same seed and print how far this output is from it: "
        "PSNR, SSIM, max |diff|, both wall times",
    )
    request.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_assignment,
        help="a model-specific sampling parameter, e.g. max_area=262144 for FLUX.1 Kontext (repeatable)",
    )
    request.add_argument(
        "--output-path",
        help="a file name (an _N suffix is added for several images) or a folder for generated names "
        "(default: the --output-dir folder)",
    )
    model.add_argument("--output-dir", default="outputs", help="where images go when --output-path is not given")


def add_engine_arguments(group: argparse._ArgumentGroup) -> None:
    """The options that load a model (`easel generate` and `easel serve` share them)."""
    group.add_argument(
        "--model-path", help="a Diffusers-format folder or a Hugging Face id (default: Easel's built-in demo model)"
    )
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: a GPU when there is one)")
    precisions = ["auto", "fp32", "bf16", "fp16"]  # ServerArgs.PRECISIONS; spelled out so --help needs no torch
    for kind in ("dit", "vae", "text-encoder"):
        group.add_argument(f"--{kind}-precision", default="auto", choices=precisions, help=f"{kind} weights dtype")
    # Speed (README: Speed); the choices are spelled out, as the precisions are, so that --help needs no torch.
    group.add_argument(
        "--attention-backend",
        default="auto",
        choices=["auto", "torch_sdpa", "flash_attn", "sage_attn"],
        help="attention kernels (auto: FlashAttention on a GPU where installed, else PyTorch's; sage_attn is lossy)",
    )
    group.add_argument(
        "--kernel-backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="the fused norm/modulate/gate/rotary/GELU layers: Easel's Triton kernels or PyTorch's ops (auto: Triton "
        "on CUDA)",
    )
    group.add_argument(
        "--enable-torch-compile",
        action="store_true",
        help="regional torch.compile: each DiT block class compiled once and reused (the first request compiles)",
    )
    group.add_argument(
        "--dit-quantization",
        choices=["int8wo", "fp8"],
        help="lossy: the DiT blocks' weights in int8 (weight-only) or fp8 with fp8 activations (Hopper/Ada GPUs)",
    )
    group.add_argument(
        "--dit-layerwise-offload",
        action="store_true",
        help="DiT blocks kept in host memory, each copied to the GPU just ahead of its turn (big models, small GPUs)",
    )
    group.add_argument("--vae-tiling", action="store_true", help="decode in tiles: large images, long videos")
    group.add_argument("--vae-slicing", action="store_true", help="decode one sample at a time")
    group.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    # A parallel run (README: multi-GPU); the layout defaults are chosen and printed at start.
    group.add_argument(
        "--num-gpus", type=int, default=1, help="ranks of a parallel run, one per GPU (on the CPU: processes)"
    )
    group.add_argument(
        "--ulysses-degree", type=int, help="Ulysses sequence parallelism (default: as far as the heads divide)"
    )
    group.add_argument(
        "--ring-degree", type=int, help="ring-attention sequence parallelism (default: the ranks left over)"
    )
    group.add_argument("--enable-cfg-parallel", action="store_true", help="CFG's two passes on two halves of the ranks")
    group.add_argument("--tp-size", type=int, help="tensor parallelism (default 1)")
    group.add_argument("--nnodes", type=int, default=1, help="nodes of a parallel run started without torchrun")
    group.add_argument(
        "--node-rank", type=int, default=0, help="this node's index, 0..nnodes-1 (node 0 takes the request)"
    )
    group.add_argument("--dist-init-addr", metavar="HOST:PORT", help="where the nodes meet: an address of node 0")


# The grammar of easel/runtime/cache/spec.py in short.
CACHE_HELP = (
    "step caching, which skips a DiT's blocks at steps where they would change little: a preset ("
    + ", ".join(PRESETS)
    + ") or METHOD[:key=value,...], e.g. dbcache:threshold=0.2,warmup=4; methods: "
    + ", ".join(f"{method} ({', '.join(keys)})" if keys else method for method, keys in KEYS.items())
    + "; a bad spec's error lists the full grammar"
)


def add_cache_argument(group: argparse._ArgumentGroup, default: str) -> None:
    """--cache SPEC (`easel generate`: the request's; `easel serve`: the default of requests that give none)."""
    group.add_argument("--cache", metavar="SPEC", help=f"{CACHE_HELP}; {default}")


def checked_cache_spec(spec: str | None) -> str | None:
    """`spec` once it parses; else its InvalidInputError, naming --cache."""
    try:
        parse_cache_spec(spec)
    except InvalidInputError as error:
        raise InvalidInputError(f"--cache {spec!r}: {error}") from None
    return spec


def add_lora_path_argument(group: argparse._ArgumentGroup) -> None:
    """--lora-path (`easel generate` and `easel serve` share it): args.lora_path is a list of (path, strength)."""
    group.add_argument(
        "--lora-path",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        type=_lora_spec,
        help="a LoRA file (Diffusers/PEFT or kohya/ComfyUI safetensors) applied at STRENGTH (default 1; repeatable)",
    )


def model_path(args: argparse.Namespace) -> str:
    """--model-path, or the built-in demo model (a tiny FLUX.1 trained on shapes) when it is not given."""
    from easel.demo import DEMO_MODEL_PATH  # imported here so that --help stays quick

    return args.model_path or str(DEMO_MODEL_PATH)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `ServerArgs` fields that `add_engine_arguments` set, as `DiffGenerator.from_pretrained` takes them."""
    return {
        "device": args.device,
        "dit_precision": args.dit_precision,
        "vae_precision": args.vae_precision,
        "text_encoder_precision": args.text_encoder_precision,
        "attention_backend": args.attention_backend,
        "kernel_backend": args.kernel_backend,
        "enable_torch_compile": args.enable_torch_compile,
        "dit_quantization": args.dit_quantization,
        "dit_layerwise_offload": args.dit_layerwise_offload,
        "vae_tiling": args.vae_tiling,
        "vae_slicing": args.vae_slicing,
        "log_level": args.log_level,
        **{name: getattr(args, name) for name in PARALLEL_OPTIONS},
    }


PARALLEL_OPTIONS = (
    "num_gpus",
    "ulysses_degree",
    "ring_degree",
    "enable_cfg_parallel",
    "tp_size",
    "nnodes",
    "node_rank",
    "dist_init_addr",
)


def _lora_spec(text: str) -> tuple[str, float]:
    """PATH or PATH:STRENGTH; a tail that is not a number stays part of the path (C:\\loras\\x.safetensors)."""
    path, sep, strength = text.rpartition(":")
    try:
        return (path, float(strength)) if sep and path else (text, 1.0)
    except ValueError:
        return text, 1.0


def _assignment(text: str) -> tuple[str, object]:
    """NAME=VALUE with VALUE read as JSON where it is JSON (numbers, true/false, lists), else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.replace("-", "_"), value


def run_generate(args: argparse.Namespace) -> int:
    # Imported here so that --help answers without loading torch.
    from easel import DiffGenerator
    from easel.runtime.distributed.parallel_state import destroy_distributed, is_output_rank
    from easel.runtime.distributed.rank_group import launch_options

    checked_cache_spec(args.cache)  # a bad spec fails before the model loads
    request = dict(
        prompt=args.prompt,
        image=args.image_path,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
        seed=args.seed,
        num_frames=args.num_frames,
        fps=args.fps,
        output_format=args.output_format,
        num_outputs_per_prompt=args.num_outputs_per_prompt,
        output_path=args.output_path or args.output_dir,
        cache=args.cache,
        **dict(args.set),
    )
    options = launch_options(model_path(args), {"output_dir": args.output_dir, **engine_options(args)}, request)
    try:
        with DiffGenerator.from_pretrained(model_path(args), **options) as generator:
            if options["node_rank"] > 0:  # another node of a parallel run: its ranks follow node 0's calls
                generator.wait()
                return 0
            for path, strength in args.lora_path:
                generator.load_lora(path, strength=strength)
            if generator.makes_frame_blocks and not args.quality_check:
                result = _generate_streamed(generator, request)
            else:
                result = generator.generate(**request, quality_check=args.quality_check)
        prints = is_output_rank()  # under torchrun, global rank 0 only
    finally:
        destroy_distributed()  # a rank of a world torchrun launched leaves it; otherwise nothing to do
    if not prints:
        return 0
    first = result.frames[0] if result.frames else result.images
    width, height = first[0].size
    size = f"{width}x{height}" + (f", {len(first)} frames" if result.frames else "")
    stages = ", ".join(f"{name.removesuffix('Stage')} {secs:.2f}s" for name, secs in result.timings.items())
    print(f"wrote {', '.join(map(str, result.paths))} ({size}); seconds: {stages}")
    if result.cache is not None:
        print(describe_cache(result.cache))
    if result.quality is not None:
        print(result.quality.summary())
    return 0


def _generate_streamed(generator, request: dict[str, Any]):
    """`generate` for a block-causal video model: each block of frames goes into the MP4 as soon as it is made."""
    import time

    from easel.runtime.entrypoints.diff_generator import GenerationResult

    started, first_block, frames, paths = time.perf_counter(), None, [], []
    for block in generator.generate_stream(**request):
        first_block = first_block or time.perf_counter() - started
        frames += block.frames[0]
        paths = block.paths
    timings = {"first block": first_block, "total": time.perf_counter() - started}
    return GenerationResult([], timings, paths, frames=[frames])


def describe_cache(cache: dict[str, Any]) -> str:
    """One line of a `GenerationResult.cache`: the spec, and per branch the steps computed and skipped."""
    branches = ", ".join(
        f"{name} computed {counts['computed']} / skipped {counts['skipped']}"
        for name, counts in cache["branches"].items()
    )
    return f"cache {cache['spec']}: {branches}"
