"""`easel serve`: an OpenAI-compatible HTTP server over one model, which runs in a worker process."""

import argparse
from pathlib import Path

from easel.cli.generate import (
    add_cache_argument,
    add_engine_arguments,
    add_lora_path_argument,
    checked_cache_spec,
    engine_options,
    model_path,
)
from easel.errors import InvalidInputError
from easel.runtime.entrypoints.openai.messages import DEFAULT_MAX_BATCH_SIZE, BatchLimits


def add_serve_parser(commands) -> None:
    parser = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API", description=__doc__)
    parser.set_defaults(run=run_serve)
    model = parser.add_argument_group("model and engine")
    add_engine_arguments(model)
    add_lora_path_argument(model)
    model.add_argument(
        "--lora-dir",
        type=Path,
        metavar="DIR",
        help="the folder /v1/set_lora may load LoRA files from (paths relative to it; nothing outside it); "
        "without it, LoRA files are loaded from --lora-path only",
    )
    add_cache_argument(model, "the default of requests without a `cache` field (default: none)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    server.add_argument("--port", type=int, default=30000, help="port to listen on (0: any free one)")
    server.add_argument("--served-model-name", help="the model's name in the API (default: the model folder's name)")
    server.add_argument(
        "--max-queued-requests",
        type=_non_negative,
        default=32,
        help="requests that may wait while the worker is full; more are answered 429 (default: 32)",
    )
    server.add_argument(
        "--max-batch-size",
        type=_positive,
        help=f"requests the worker runs together, a denoising step at a time, sharing DiT forwards; 1 runs one at a "
        f"time (default: {DEFAULT_MAX_BATCH_SIZE}, or 1 with --num-gpus above 1)",
    )
    server.add_argument(
        "--max-batch-tokens",
        type=_positive,
        help="image tokens (latent 2x2 patches, times samples and guidance passes) the requests running together may "
        "hold in all; a request larger than this runs alone (default: 1024 on a CPU, 65536 on a GPU)",
    )
    server.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every /v1 route")
    server.add_argument("--max-upload-mb", type=float, default=20, help="largest upload taken, in MB (default: 20)")
    server.add_argument(
        "--webui",
        action="store_true",
        help="also serve a web UI at /ui, over the same model (with --api-key, its login takes the key as password)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _batch_limits(args: argparse.Namespace) -> BatchLimits:
    """--max-batch-size and --max-batch-tokens, checked; batching runs in one process, so not with --num-gpus."""
    size = args.max_batch_size
    if args.num_gpus > 1:
        if size is not None and size > 1:
            raise InvalidInputError(
                f"--max-batch-size {size} does not combine with --num-gpus {args.num_gpus} yet: the ranks of a "
                "parallel run take whole requests, one at a time; drop --max-batch-size (or pass 1)"
            )
        size = 1
    return BatchLimits(max_size=DEFAULT_MAX_BATCH_SIZE if size is None else size, max_tokens=args.max_batch_tokens)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    # Imported here so that --help answers without loading FastAPI.
    from easel.runtime.entrypoints.openai.api_server import run_server
    from easel.runtime.entrypoints.openai.state import ServeSettings

    # Checked here, before the worker starts, and without torch (which only the worker loads).
    cache = checked_cache_spec(args.cache or "none")
    if args.lora_dir is not None and not args.lora_dir.is_dir():
        raise InvalidInputError(f"--lora-dir {args.lora_dir} is not a folder")
    degrees = (args.ulysses_degree, args.ring_degree, args.tp_size)
    if args.num_gpus != 1 or args.nnodes != 1 or args.enable_cfg_parallel or any(d not in (None, 1) for d in degrees):
        # A bad layout is one line and exit 2 here, before the server and its ranks start (torch only then).
        from easel.runtime.distributed.layout import plan_layout
        from easel.runtime.server_args import ServerArgs

        plan_layout(ServerArgs(model_path=model_path(args), **engine_options(args)))

    settings = ServeSettings(
        model_path=model_path(args),
        engine_options={**engine_options(args), "cache": cache},
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        max_queued_requests=args.max_queued_requests,
        api_key=args.api_key,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        # Resolved once here: the worker confines requested paths to this folder, and the answers show them in it.
        lora_dir=args.lora_dir.resolve() if args.lora_dir is not None else None,
        lora_paths=[(Path(path).resolve(), strength) for path, strength in args.lora_path],
        webui=args.webui,
        batch_limits=_batch_limits(args),
    )
    return run_server(settings)
