"""`easel serve` under load: step-level batching against one request at a time, in one run.

    python benchmarks/bench_serve.py                          # both cases, clients 1 4 16 64 (long: see below)
    python benchmarks/bench_serve.py --case demo --clients 1 4 16
    python benchmarks/bench_serve.py --case flux70 --flux-folder build/bench/flux-medium --json build/bench/serve.json
    python benchmarks/bench_serve.py --compare-packing        # in-process: bucketing against padding, one DiT step
    python benchmarks/bench_serve.py --smoke                  # CI: demo only, clients 1 and 2, 4 steps (~15 s)

What it measures. For each case and each mode, one `python -m easel serve --port 0` subprocess (started one after
another, never two at once) with `--max-batch-size 1` (one-at-a-time) or the server's default `--max-batch-size`
(batched: the worker runs up to that many requests together, a denoising step at a time, within
`--max-batch-tokens`), and `--max-queued-requests` at the largest client count, so that no request is refused.
After one warm-up request, each client count N of `--clients` runs N concurrent clients in a closed loop (each sends
its next request when its previous answer arrives; httpx, one thread per client) until the level's requests are
done: max(N x `--requests-per-client`, `--min-requests`) of them, so that a level with few clients still averages
over several requests. Request i of a level is the same in both modes (prompt, seed i, size and steps below), so the
i-th answers of the two modes are compared pixel by pixel: batched must equal alone within 1 level of 255 (PNG).

Per case, a markdown table per client count: images per second of each mode (the level's requests over its wall
time), batched / one-at-a-time, p50 and p95 latency (send to answer) of each mode, and the max pixel difference of
the batched answers against the one-at-a-time answers to the same requests; the run exits 1 if one differs by more
than 1 level.

Cases. `demo`: the built-in demo model (a tiny trained FLUX) at its folder's defaults (64x64, 20 steps, true CFG 3
against the negative prompt ""), the request holding only a prompt (colour x shape x position on a background, varied
per request) and a seed. `flux70`: a ~70 M-parameter random-weight FLUX.1-dev DiT with tiny text encoders and VAE
(bench_vs_diffusers.py's folder; built in a temp dir, or once at `--flux-folder` and reused), requests cycling
through 256x256 / 320x320 and 4..8 steps, embedded guidance, max_sequence_length at the model's default.

`--compare-packing` (no server): on the flux70 DiT, one forward of a 256x256 request plus one of a 320x320 request
(bucketing by shape, what the server does: two forwards of batch 1) against one forward of both rows, the 256 one
zero-padded to the 320 one's token count (packing without its key-padding mask: a lower bound of packing's cost),
median of `--repeats` after a warm-up, under torch.inference_mode.

Threads: the servers inherit this environment and let torch take the machine's cores, unless `--threads N` sets
OMP_NUM_THREADS=N for them (and torch's threads for --compare-packing). A full `--case all` run takes about
20 minutes on a quiet 2-core machine: demo ~4 (344 requests per mode; one-at-a-time ~2.5 img/s), flux70 ~15 (176
requests per mode at ~0.4 img/s in either mode); `--clients 1 4 16` takes about 5.
"""

import argparse
import base64
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

READY_LINE = re.compile(r"^easel: serving (\S+) on (http://\S+)$")
START_TIMEOUT_S = 300  # the worker imports torch and loads the model; the machine may be busy
REQUEST_TIMEOUT_S = 3600  # one-at-a-time at 64 clients: a request waits for the 63 before it
MAX_PIXEL_DIFFERENCE = 1  # batched answers must equal the one-at-a-time ones within this many levels of 255
MODES = {"one-at-a-time": ["--max-batch-size", "1"], "batched": []}  # batched: the server's default size

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "purple", "cyan", "pink", "gray")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the centre")
FLUX_SIZES = (256, 320)
FLUX_STEPS = (4, 5, 6, 7, 8)


def scene_prompt(index: int) -> str:
    """A varied demo prompt: "a red circle on the left, on a blue background", one per index."""
    colour = COLOURS[index % len(COLOURS)]
    shape = SHAPES[index // len(COLOURS) % len(SHAPES)]
    position = POSITIONS[index // (len(COLOURS) * len(SHAPES)) % len(POSITIONS)]
    background = COLOURS[(index % len(COLOURS) + 1 + index // 7 % (len(COLOURS) - 1)) % len(COLOURS)]
    return f"a {colour} {shape} {position}, on a {background} background"


@dataclass(frozen=True)
class Case:
    """One model under load: the server's model arguments and the body of request i."""

    name: str
    description: str
    serve_args: list[str]
    requests_per_client: int
    body: Callable[[int], dict[str, Any]]


def demo_case(steps: int | None) -> Case:
    """The demo model at its defaults (or at `steps`, for the smoke run): only a prompt and a seed are sent."""

    def body(index: int) -> dict[str, Any]:
        extra = {} if steps is None else {"num_inference_steps": steps}
        return {"prompt": scene_prompt(index), "seed": index, "response_format": "b64_json", **extra}

    steps_text = "20 steps" if steps is None else f"{steps} steps"
    return Case("demo", f"demo model, 64x64, {steps_text}, true CFG 3", [], 4, body)


def flux_case(folder: Path) -> Case:
    """The ~70 M-parameter FLUX folder, requests cycling through two sizes and 4..8 steps."""

    def body(index: int) -> dict[str, Any]:
        side = FLUX_SIZES[index % len(FLUX_SIZES)]
        return {
            "prompt": scene_prompt(index),
            "size": f"{side}x{side}",
            "seed": index,
            "num_inference_steps": FLUX_STEPS[index % len(FLUX_STEPS)],
            "response_format": "b64_json",
        }

    sizes = " / ".join(f"{side}x{side}" for side in FLUX_SIZES)
    description = f"~70 M-parameter FLUX.1-dev DiT, {sizes}, {FLUX_STEPS[0]}-{FLUX_STEPS[-1]} steps"
    return Case("flux70", description, ["--model-path", str(folder)], 2, body)


@contextmanager
def flux_folder(path: Path | None) -> Iterator[Path]:
    """The flux70 folder: `path` (written there first if it holds no model), or a temp dir removed afterwards."""
    if path is not None and (path / "model_index.json").exists():
        yield path
        return
    from easel.testing import MEDIUM_FLUX_TRANSFORMER_CONFIG, build_flux_pipeline

    with tempfile.TemporaryDirectory(prefix="bench_serve_flux_") as scratch:
        folder = path or Path(scratch) / "flux-medium"
        print(f"writing the ~70 M-parameter FLUX folder to {folder}", flush=True)
        build_flux_pipeline(folder, seed=0, variant="dev", transformer_config=MEDIUM_FLUX_TRANSFORMER_CONFIG)
        yield folder


class Server:
    """One `python -m easel serve --port 0` in its own process group, ready once it prints its serving line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "easel", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            start_new_session=True,  # the server and its worker, stopped together
        )
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self.ready.wait(START_TIMEOUT_S) or not self.url:
            tail = self.stderr_tail()
            self.stop()
            raise RuntimeError(f"easel serve did not get ready; it wrote:\n{tail}")
        self.health = httpx.get(f"{self.url}/health", timeout=30).json()

    def _read_stdout(self) -> None:
        """Finds the ready line, then keeps draining stdout so that the server never blocks on it."""
        for line in self.process.stdout:
            if not self.ready.is_set() and (match := READY_LINE.match(line.rstrip("\n"))):
                self.url = match.group(2)
                self.ready.set()
        self.ready.set()  # it exited: the wait ends, and the empty url tells

    def stderr_tail(self, chars: int = 4000) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]

    def stop(self) -> None:
        """SIGTERM to the process group (the server stops its worker), SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.stderr.close()


@contextmanager
def served(args: list[str], env: dict[str, str]) -> Iterator[Server]:
    """A started server, stopped on the way out whatever happens."""
    server = Server(args, env)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Level:
    """One client count of one mode: each request's latency and answer (base64 PNG), and the level's wall time."""

    clients: int
    wall_s: float
    latencies_s: list[float]
    images: list[str] = field(repr=False)

    @property
    def images_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def latency(self, percentile: float) -> float:
        return float(np.percentile(self.latencies_s, percentile))


def generate(http: httpx.Client, body: dict[str, Any]) -> str:
    """One POST /v1/images/generations; its image as base64 PNG (an error answer raises with its body)."""
    response = http.post("/v1/images/generations", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"request {body} answered {response.status_code}: {response.text[:500]}")
    return response.json()["data"][0]["b64_json"]


def run_level(url: str, case: Case, clients: int, total: int) -> Level:
    """`clients` closed-loop clients sending requests 0..total-1 of `case`, each its next once answered."""
    latencies: list[float] = [0.0] * total
    images: list[str] = [""] * total
    lock = threading.Lock()
    pending = iter(range(total))

    def take() -> int | None:
        with lock:
            return next(pending, None)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
            while (index := take()) is not None:
                start = time.perf_counter()
                images[index] = generate(http, case.body(index))
                latencies[index] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()  # re-raises a client's error
    return Level(clients, time.perf_counter() - start, latencies, images)


def run_mode(case: Case, mode: str, args: argparse.Namespace, env: dict[str, str]) -> dict[int, Level]:
    """One server for (case, mode): a warm-up request, then every client count in turn."""
    serve_args = [*case.serve_args, *MODES[mode], "--max-queued-requests", str(max(args.clients))]
    if mode == "batched" and args.max_batch_tokens is not None:
        serve_args += ["--max-batch-tokens", str(args.max_batch_tokens)]
    levels: dict[int, Level] = {}
    with served(serve_args, env) as server:
        print(f"{case.name} {mode}: serving on {server.url}, max_batch_size {server.health['max_batch_size']}")
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            generate(http, case.body(0))  # warm-up
        for clients in args.clients:
            total = max(clients * requests_per_client(case, args), args.min_requests)
            level = run_level(server.url, case, clients, total)
            levels[clients] = level
            print(
                f"  {clients:>3} clients, {total:>3} requests: {level.wall_s:7.2f} s, {level.images_per_s:6.2f} img/s, "
                f"p50 {level.latency(50):.2f} s, p95 {level.latency(95):.2f} s",
                flush=True,
            )
    return levels


def requests_per_client(case: Case, args: argparse.Namespace) -> int:
    """--requests-per-client, or the case's own default."""
    return args.requests_per_client or case.requests_per_client


def decoded(image: str) -> np.ndarray:
    """A base64 PNG as an int16 array (room for differences)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB"), dtype=np.int16)


def max_difference(batched: Level, alone: Level) -> int:
    """The largest pixel difference (0..255 levels) between the two modes' answers to the same requests."""
    worst = 0
    for left, right in zip(batched.images, alone.images, strict=True):
        a, b = decoded(left), decoded(right)
        if a.shape != b.shape:
            raise RuntimeError(f"batched answer {a.shape} against one-at-a-time {b.shape}")
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


def print_table(case: Case, results: dict[str, dict[int, Level]], differences: dict[int, int]) -> None:
    """The case's markdown table: throughput of each mode, their ratio, latencies, and the batched answers' check."""
    alone, batched = results["one-at-a-time"], results["batched"]
    print(f"\n### {case.name}: {case.description}\n")
    print(
        "| clients | requests | one-at-a-time img/s | batched img/s | throughput ratio | "
        "one-at-a-time p50 / p95 s | batched p50 / p95 s | max pixel diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients, one in alone.items():
        many = batched[clients]
        print(
            f"| {clients} | {len(one.latencies_s)} | {one.images_per_s:.2f} | {many.images_per_s:.2f} | "
            f"{many.images_per_s / one.images_per_s:.2f} | {one.latency(50):.2f} / {one.latency(95):.2f} | "
            f"{many.latency(50):.2f} / {many.latency(95):.2f} | {differences[clients]} |"
        )
    worst = max(differences.values())
    verdict = "ok" if worst <= MAX_PIXEL_DIFFERENCE else f"FAIL: above {MAX_PIXEL_DIFFERENCE}"
    checked = sum(len(level.images) for level in batched.values())
    line = f"batched against one-at-a-time, same requests: max pixel difference {worst} over {checked} images"
    print(f"\n{line} ({verdict})")


def run_case(case: Case, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Both modes of a case, one server after the other; the table, and the numbers for --json."""
    results = {mode: run_mode(case, mode, args, env) for mode in MODES}
    differences = {
        clients: max_difference(results["batched"][clients], results["one-at-a-time"][clients])
        for clients in args.clients
    }
    print_table(case, results, differences)
    return {
        "description": case.description,
        "levels": [
            {
                "clients": clients,
                "max_pixel_difference": differences[clients],
                **{mode: level_numbers(levels[clients]) for mode, levels in results.items()},
            }
            for clients in args.clients
        ],
    }


def level_numbers(level: Level) -> dict[str, Any]:
    """A level's numbers for --json (its images left out)."""
    return {
        "wall_s": level.wall_s,
        "images_per_s": level.images_per_s,
        "p50_s": level.latency(50),
        "p95_s": level.latency(95),
        "latencies_s": level.latencies_s,
    }


def server_env(threads: int | None) -> dict[str, str]:
    """This environment, with OMP_NUM_THREADS set only when --threads asks."""
    return {**os.environ, **({} if threads is None else {"OMP_NUM_THREADS": str(threads)})}


def captured_kwargs(generator: Any, transformer: Any, side: int) -> dict[str, Any]:
    """The DiT kwargs of the first forward of a one-step `side`x`side` generation."""
    captured: list[dict[str, Any]] = []
    original = transformer.forward

    def capture(*positional: Any, **kwargs: Any) -> Any:
        if positional:
            raise RuntimeError("the DiT was called with positional arguments; capture expects kwargs only")
        if not captured:
            captured.append(dict(kwargs))
        return original(**kwargs)

    transformer.forward = capture
    try:
        generator.generate(scene_prompt(0), height=side, width=side, num_inference_steps=1, seed=0)
    finally:
        del transformer.forward
    return captured[0]


def padded_pair(short: dict[str, Any], long: dict[str, Any], rows: tuple[str, ...]) -> dict[str, Any]:
    """One batch of both requests: the short one's hidden_states zero-padded to the long one's tokens, the long
    one's rotary table, the row kwargs concatenated."""
    import torch

    hidden = short["hidden_states"]
    pad = long["hidden_states"].shape[1] - hidden.shape[1]
    padded = {**short, "hidden_states": torch.nn.functional.pad(hidden, (0, 0, 0, pad))}
    return {
        name: torch.cat([padded[name], value]) if name in rows and torch.is_tensor(value) else value
        for name, value in long.items()
    }


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `run` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_packing(args: argparse.Namespace) -> dict[str, Any]:
    """Bucketing (two forwards of batch 1) against padding both rows into one forward, on the flux70 DiT."""
    import torch

    from easel import DiffGenerator

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with flux_folder(args.flux_folder) as folder:
        generator = DiffGenerator.from_pretrained(folder)
        transformer = generator.pipeline.modules["transformer"]
        short, long = (captured_kwargs(generator, transformer, side) for side in FLUX_SIZES)
    packed = padded_pair(short, long, generator.server_args.pipeline_config.dit_row_kwargs)

    def bucketed() -> None:
        transformer(**short)
        transformer(**long)

    def padded() -> None:
        transformer(**packed)

    with torch.inference_mode():
        alone, together = transformer(**long), transformer(**packed)  # warm-up, and a check of the padded batch
        long_row_difference = float((together[1:] - alone).abs().max())
        bucketed_s = median_seconds(bucketed, args.repeats)
        padded_s = median_seconds(padded, args.repeats)
    numbers = {
        "parameters": sum(parameter.numel() for parameter in transformer.parameters()),
        "threads": torch.get_num_threads(),
        "tokens": [kwargs["hidden_states"].shape[1] for kwargs in (short, long)],
        "bucketed_s": bucketed_s,
        "padded_s": padded_s,
        "ratio": padded_s / bucketed_s,
        "long_row_difference": long_row_difference,
    }
    print_packing(numbers, args.repeats)
    return numbers


def print_packing(numbers: dict[str, Any], repeats: int) -> None:
    """The packing comparison as a markdown table and the ratio."""
    (small, large), (short, long) = FLUX_SIZES, numbers["tokens"]
    print(f"\n### compare-packing: {numbers['parameters'] / 1e6:.0f} M-parameter FLUX DiT, one denoising step")
    print(f"\n{numbers['threads']} torch threads, median of {repeats}\n")
    print("| forwards | median s |")
    print("|---|---:|")
    bucketing = f"bucketing: {small}x{small} ({short} tokens), then {large}x{large} ({long}), batch 1 each"
    print(f"| {bucketing} | {numbers['bucketed_s']:.3f} |")
    print(f"| padding: both rows in one forward at {long} tokens, no mask | {numbers['padded_s']:.3f} |")
    print(f"\npadded / bucketed: {numbers['ratio']:.2f}")
    print(
        f"the {large}x{large} row, padded batch against alone: max abs difference {numbers['long_row_difference']:.1e}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("demo", "flux70", "all"), default="all")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent client counts")
    parser.add_argument(
        "--requests-per-client", type=int, help="requests per client and level (default: 4 demo, 2 flux70)"
    )
    parser.add_argument("--min-requests", type=int, default=8, help="fewest requests of a level (default: 8)")
    parser.add_argument("--max-batch-tokens", type=int, help="the batched server's --max-batch-tokens (default: its)")
    parser.add_argument("--flux-folder", type=Path, help="the flux70 folder, written there once (default: a temp dir)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers (default: torch's own choice)")
    parser.add_argument("--compare-packing", action="store_true", help="only the in-process packing comparison")
    parser.add_argument("--repeats", type=int, default=5, help="--compare-packing: timed forwards of each kind")
    parser.add_argument("--smoke", action="store_true", help="a tiny demo run for CI: clients 1 2, 2 requests, 4 steps")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    if args.compare_packing:
        numbers = {"compare_packing": compare_packing(args)}
    else:
        if args.smoke:
            args.case, args.clients, args.requests_per_client, args.min_requests = "demo", [1, 2], 2, 1
        env = server_env(args.threads)
        numbers = {"cases": {}}
        if args.case in ("demo", "all"):
            numbers["cases"]["demo"] = run_case(demo_case(4 if args.smoke else None), args, env)
        if args.case in ("flux70", "all"):
            with flux_folder(args.flux_folder) as folder:
                numbers["cases"]["flux70"] = run_case(flux_case(folder), args, env)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2))
    worst = [level["max_pixel_difference"] for case in numbers.get("cases", {}).values() for level in case["levels"]]
    return 1 if any(difference > MAX_PIXEL_DIFFERENCE for difference in worst) else 0


if __name__ == "__main__":
    sys.exit(main())
