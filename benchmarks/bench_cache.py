"""Step caching side by side: Easel's cache specs, Diffusers + cache-dit, and SGLang Diffusion, in one process.

    python benchmarks/bench_cache.py                          # both cases at their defaults (long: see below)
    python benchmarks/bench_cache.py --case demo --engines easel diffusers --cachedit-taylorseer \
        --easel-specs fast balanced quality teacache:threshold=0.65 teacache:threshold=1.0 \
        dbcache:threshold=0.12 dbcache:threshold=0.2 dbcache:threshold=0.3 steps:every=3,warmup=3   # the README's table
    python benchmarks/bench_cache.py --case demo --prompts 8  # the demo model only, 4 seen + 4 held-out prompts
    python benchmarks/bench_cache.py --case flux70m --flux-prompts 1 --steps 8
    python benchmarks/bench_cache.py --case demo --prompts 2 --easel-specs balanced "dbcache:threshold=0.2" \\
        --cachedit-thresholds 0.12 0.3 --cachedit-taylorseer --json build/bench/cache.json
    bash ../shared/tools/sglang-cpu-venv.sh /tmp/sglvenv      # once (minutes, network): adds the SGLang rows

Cases. `demo`: the built-in demo model (a tiny trained FLUX) at its folder's defaults (64x64, 20 steps, true CFG 3
against the negative prompt "", max_sequence_length 24) over `--prompts` prompts, half of combinations training saw
and half held out, seed = the prompt's index. `flux70m`: a ~70 M-parameter random-weight FLUX.1-dev DiT with tiny
encoders (written once under `--cache-dir`, like bench_vs_diffusers.py), 256x256, `--steps` 28, embedded guidance 3.5
and no true CFG, over `--flux-prompts` prompts.

Rows. Easel: the exact path and each `--easel-specs` cache spec. Diffusers: `FluxPipeline` exact, and with cache-dit's
DBCache (Fn=1, Bn=0, its default warm-up) at each `--cachedit-thresholds` threshold and with its TaylorSeer
calibrator (`--cachedit-taylorseer THRESHOLD:ORDER`; each case has its own default sweeps, higher on the random-weight
DiT, whose residuals change too much between steps for small thresholds to cache anything); with true CFG (demo)
both in cache-dit's own mode for
FluxPipeline (the conditional and unconditional calls share one cache context) and with its `enable_separate_cfg`
(one context per branch). SGLang Diffusion (sglang_engine.py, in its own process; when `--sglang-python` names a
built environment; absent, the reason is printed): exact, and its cache-dit integration at the same thresholds with
SGLang's own defaults (warm-up 4, at most 3 cached steps in a row); its TeaCache is reported, not run, where its FLUX
DiT does not implement it.

Measured per row: mean wall seconds per image (the whole generate call, model loading excluded, after a warm-up
generation per engine and per cached path; rows run interleaved, their order rotated every prompt, so that drift on a
shared machine affects all alike), the speed-up against the same engine's exact row measured in this run (ratio of
means), mean and worst PSNR and mean SSIM against that engine's exact image of the same prompt and seed (an identical
image counts as 100 dB), the fraction of transformer calls served from the cache (Easel: `result.cache`; cache-dit:
its context's cached steps), and on the demo case the checker's accuracy per attribute (easel.demo.checker),
separately for seen and held-out prompts. Then each engine's speed-up/PSNR Pareto frontier and, for the demo case,
Easel's best speed-up at >= 32 dB with held-out colour/shape/position within 2 points of Easel exact against
cache-dit's best at >= 32 dB.

Each engine is compared with its own exact path only: PSNR, SSIM and speed-up of a cached row are against the same
engine's uncached output and time, never another engine's. (Easel's and Diffusers' exact images agree; SGLang's do
not on the demo case, since SGLang 0.5.23 encodes the negative prompt at 512 T5 tokens whatever max_sequence_length
says.) A full default run takes about 40 minutes of a 2-core machine (demo ~30 at 128 prompts, flux70m ~11).
"""

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read when cache_dit is imported: its enable/disable chatter

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sglang_engine import DEFAULT_SGLANG_PYTHON, SGLangEngine, SGLangError, sglang_python_unavailable  # noqa: E402

from easel import DiffGenerator  # noqa: E402
from easel.demo import DEMO_MODEL_PATH  # noqa: E402
from easel.demo.checker import ATTRIBUTES, attribute_accuracy  # noqa: E402
from easel.demo.scenes import evaluation_prompts  # noqa: E402
from easel.quality import psnr, ssim  # noqa: E402
from easel.runtime.cache.spec import PRESETS, parse_cache_spec  # noqa: E402

DEMO_EASEL_SPECS = [
    "fast",
    "balanced",
    "quality",
    *(f"teacache:threshold={t}" for t in ("0.2", "0.3", "0.5", "0.65", "0.8", "1.0")),
    *(f"dbcache:fn=1,bn=0,threshold={t},warmup=4" for t in ("0.12", "0.2", "0.3")),
    "dbcache:threshold=0.2,taylorseer=1,order=2",
    "steps:every=2,warmup=3",
    "steps:every=3,warmup=3",
]
# A random-weight DiT's residuals change much from step to step: thresholds that cache on the trained demo model
# cache nothing there (at 28 steps, cache-dit at 0.12 and 0.3 and Easel's dbcache at 0.2 skipped no call), so its
# sweeps reach higher.
FLUX_EASEL_SPECS = [
    "fast",
    "balanced",
    "quality",
    "teacache:threshold=1.0",
    "dbcache:threshold=0.2",
    "dbcache:threshold=0.5",
    "dbcache:threshold=0.5,taylorseer=1,order=2",
    "steps:every=2,warmup=3",
]
CACHEDIT_THRESHOLDS = {"demo": [0.08, 0.12, 0.2, 0.3, 0.5], "flux70m": [0.12, 0.3, 0.5, 0.8, 1.0]}
CACHEDIT_TAYLORSEER = {"demo": ["0.2:1", "0.2:2"], "flux70m": ["0.5:1", "0.5:2"]}
FLUX_PROMPTS = [
    "a photo of a red fox in a snowy forest at dawn",
    "a watercolor painting of a lighthouse on a cliff",
    "a bowl of ramen on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon",
]
PSNR_CAP_DB = 100.0  # an identical image's PSNR is infinite; it counts as this in a mean
PSNR_BAR_DB = 32.0
# "Within 2 points" of the exact path, either way. One image of 16 held-out prompts is 6 points, so a single flipped
# shape (which caching causes about as often as it mends one) decides it there: the default runs 64 held-out prompts.
ACCURACY_SLACK = 0.02
KEY_ATTRIBUTES = ("colour", "shape", "position")
ENGINES = ("easel", "diffusers", "sglang")


# --- what a row is ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CacheDit:
    """One cache-dit DBCache setting (Fn=1, Bn=0, the engine's default warm-up)."""

    threshold: float
    taylorseer_order: int = 0  # 0: no TaylorSeer calibrator
    separate_cfg: bool = False  # True: cache-dit's enable_separate_cfg; False: its own choice for the pipeline

    def label(self) -> str:
        text = f"cache-dit F1B0 r={self.threshold:g}"
        if self.taylorseer_order:
            text += f" taylorseer o{self.taylorseer_order}"
        return text + (" sep-cfg" if self.separate_cfg else "")


@dataclasses.dataclass
class Row:
    engine: str
    label: str
    config: Any  # easel: a cache spec; diffusers / sglang: a CacheDit, or None for the exact path
    seconds: list[float] = dataclasses.field(default_factory=list)
    images: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # prompt index -> (H, W, C) in 0..1
    skipped: list[float] = dataclasses.field(default_factory=list)  # per image, the fraction of transformer calls
    error: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.config is None or self.config == "none"


class RowError(Exception):
    """A row that cannot run (an engine's error): it is reported, not retried."""


def easel_rows(specs: list[str]) -> list[Row]:
    """The exact row and one per distinct spec (a preset and the spec it names are one row, labelled with both)."""
    rows: dict[str, Row] = {"none": Row("easel", "easel exact", "none")}
    for spec in specs:
        canonical = str(parse_cache_spec(spec))
        if canonical in rows:
            if spec in PRESETS and f"[{spec}]" not in rows[canonical].label:
                rows[canonical].label += f" [{spec}]"
            continue
        label = f"easel {PRESETS[spec]} [{spec}]" if spec in PRESETS else f"easel {spec}"
        rows[canonical] = Row("easel", label, canonical)
    return list(rows.values())


def cachedit_settings(args: argparse.Namespace, case: "Case", engine: str) -> list[CacheDit]:
    true_cfg = case.held_out is not None
    thresholds = CACHEDIT_THRESHOLDS[case.name] if args.cachedit_thresholds is None else args.cachedit_thresholds
    taylorseer = CACHEDIT_TAYLORSEER[case.name] if args.cachedit_taylorseer is None else args.cachedit_taylorseer
    orders = []
    for item in taylorseer:
        threshold, _, order = item.partition(":")
        orders.append((float(threshold), int(order or 1)))
    modes = [False]
    if engine == "diffusers" and true_cfg:  # without CFG, separate_cfg changes nothing; SGLang does not expose it
        modes = {"auto": [False], "separate": [True], "both": [False, True]}[args.cachedit_cfg]
    settings = []
    for separate in modes:
        settings += [CacheDit(t, 0, separate) for t in thresholds]
        settings += [CacheDit(t, order, separate) for t, order in orders]
    return settings


# --- engines ---------------------------------------------------------------------------------------------------------


class EaselEngine:
    name = "easel"

    def __init__(self, folder: Path, request: dict[str, Any]):
        self.generator = DiffGenerator.from_pretrained(
            folder, progress_bar=False, dit_precision="fp32", vae_precision="fp32", text_encoder_precision="fp32"
        )
        self.request = request

    def run(self, row: Row, prompt: str, seed: int) -> tuple[float, np.ndarray, float]:
        start = time.perf_counter()
        result = self.generator.generate(prompt, seed=seed, cache=row.config, output_type="np", **self.request)
        seconds = time.perf_counter() - start
        branches = (result.cache or {}).get("branches", {}).values()
        computed = sum(branch.get("computed", 0) for branch in branches)
        skipped = sum(branch.get("skipped", 0) for branch in branches)
        return seconds, np.asarray(result.images)[0], skipped / (computed + skipped) if computed + skipped else 0.0

    def close(self) -> None:
        pass


class DiffusersEngine:
    """Diffusers' FluxPipeline; cache-dit runs on a second pipeline (own transformer, shared encoders and VAE), its
    hooks installed just before each cached call and removed after, so the exact pipeline never carries any."""

    name = "diffusers"

    def __init__(self, folder: Path, request: dict[str, Any], transformer_calls: int):
        import cache_dit
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        logging.getLogger("cache_dit").setLevel(logging.ERROR)
        self.cache_dit = cache_dit
        self.exact = diffusers.FluxPipeline.from_pretrained(folder, dtype=torch.float32)
        self.exact.set_progress_bar_config(disable=True)
        self.cached = diffusers.FluxPipeline(
            **{**self.exact.components, "transformer": copy.deepcopy(self.exact.transformer)}
        )
        self.cached.set_progress_bar_config(disable=True)
        self.request = request
        self.transformer_calls = transformer_calls

    def run(self, row: Row, prompt: str, seed: int) -> tuple[float, np.ndarray, float]:
        setting: CacheDit | None = row.config
        if setting is None:
            return *self._call(self.exact, prompt, seed), 0.0
        cache_dit = self.cache_dit
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=0,
            residual_diff_threshold=setting.threshold,
            enable_separate_cfg=True if setting.separate_cfg else None,
        )
        calibrator = None
        if setting.taylorseer_order:
            calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=setting.taylorseer_order)
        cache_dit.enable_cache(self.cached, cache_config=config, calibrator_config=calibrator)
        try:
            seconds, image = self._call(self.cached, prompt, seed)
            stats = cache_dit.summary(self.cached, logging=False)[0]
            skipped = len(stats.cached_steps) + len(stats.cfg_cached_steps)
        finally:
            cache_dit.disable_cache(self.cached)
        return seconds, image, skipped / self.transformer_calls

    def _call(self, pipe, prompt: str, seed: int) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        images = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **self.request)
        return time.perf_counter() - start, np.asarray(images.images)[0]

    def close(self) -> None:
        pass


class SGLangRows:
    """SGLang Diffusion (sglang_engine.SGLangEngine, in its own environment) running this benchmark's rows: its exact
    path and its cache-dit integration, counting the transformer calls cache-dit served."""

    name = "sglang"

    def __init__(self, python: Path, folder: Path, request: dict[str, Any], embedded_cfg: float, threads: int):
        try:
            self.engine = SGLangEngine(
                python,
                folder,
                embedded_cfg=embedded_cfg,
                threads=threads,
                cache_stats=True,
                teacache_probe=True,
                workdir_prefix="bench_cache_sglang_",
            )
        except SGLangError as exc:
            raise RowError(str(exc)) from exc
        self.version = self.engine.version
        self.teacache_note = self.engine.teacache_note
        self.request = request

    def run(self, row: Row, prompt: str, seed: int) -> tuple[float, np.ndarray, float | None]:
        setting: CacheDit | None = row.config
        kwargs = {**self.request, "prompt": prompt, "seed": seed}
        if setting is None:
            kwargs["enable_cache_dit"] = False
        else:
            params = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": setting.threshold}
            if setting.taylorseer_order:
                params.update(enable_taylorseer=True, taylorseer_order=setting.taylorseer_order)
            kwargs.update(enable_cache_dit=True, cache_dit_params=params)
        try:
            reply = self.engine.generate(kwargs)
        except SGLangError as exc:
            raise RowError(str(exc)) from exc
        calls = self.request["num_inference_steps"] * (2 if "negative_prompt" in self.request else 1)
        return reply.seconds, reply.image, None if reply.skipped is None else reply.skipped / calls

    def close(self) -> None:
        self.engine.close()


# --- the cases -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    folder: Path
    prompts: list[str]
    held_out: list[bool] | None  # demo only: whether each prompt is of a held-out combination
    easel_request: dict[str, Any]
    diffusers_request: dict[str, Any]
    sglang_request: dict[str, Any]
    embedded_cfg: float
    transformer_calls: int  # per image
    easel_specs: list[str]
    description: str


def demo_case(args: argparse.Namespace) -> Case:
    seen = evaluation_prompts(False, args.prompts // 2)
    held = evaluation_prompts(True, args.prompts - args.prompts // 2)
    folder = Path(DEMO_MODEL_PATH)
    defaults = json.loads((folder / "model_index.json").read_text())["_easel_sampling_defaults"]
    request = {
        "height": defaults["height"],
        "width": defaults["width"],
        "num_inference_steps": defaults["num_inference_steps"],
        "max_sequence_length": defaults["max_sequence_length"],
        "guidance_scale": defaults["guidance_scale"],
        "true_cfg_scale": defaults["true_cfg_scale"],
        "negative_prompt": defaults["negative_prompt"],
    }
    return Case(
        name="demo",
        folder=folder,
        prompts=seen + held,
        held_out=[False] * len(seen) + [True] * len(held),
        easel_request={},  # the folder's own defaults, which `request` spells out for the other engines
        diffusers_request=request,
        sglang_request=request,
        embedded_cfg=defaults["guidance_scale"],
        transformer_calls=2 * request["num_inference_steps"],
        easel_specs=args.easel_specs or DEMO_EASEL_SPECS,
        description=(
            f"demo model, {request['height']}x{request['width']}, {request['num_inference_steps']} steps, true CFG "
            f"{request['true_cfg_scale']:g} against {request['negative_prompt']!r}, max_sequence_length "
            f"{request['max_sequence_length']}; {len(seen)} seen + {len(held)} held-out prompts"
        ),
    )


def flux_case(args: argparse.Namespace) -> Case:
    from easel.testing import MEDIUM_FLUX_TRANSFORMER_CONFIG, build_flux_pipeline

    folder = Path(args.cache_dir) / "flux-medium"  # the folder bench_vs_diffusers.py writes, reused if there
    if not (folder / "model_index.json").exists():
        print(f"writing {folder} ...", flush=True)
        build_flux_pipeline(folder, seed=0, variant="dev", transformer_config=MEDIUM_FLUX_TRANSFORMER_CONFIG)
    size = {"height": args.resolution, "width": args.resolution, "num_inference_steps": args.steps}
    request = {**size, "guidance_scale": 3.5}
    prompts = [FLUX_PROMPTS[i % len(FLUX_PROMPTS)] for i in range(args.flux_prompts)]
    return Case(
        name="flux70m",
        folder=folder,
        prompts=prompts,
        held_out=None,
        easel_request=request,
        diffusers_request=request,
        sglang_request=size,  # the guidance is SGLang's embedded_cfg_scale server argument
        embedded_cfg=3.5,
        transformer_calls=args.steps,
        easel_specs=args.easel_specs or FLUX_EASEL_SPECS,
        description=(
            f"~70 M-parameter random FLUX.1-dev DiT, {args.resolution}x{args.resolution}, {args.steps} steps, "
            f"embedded guidance 3.5, no true CFG; {len(prompts)} prompts"
        ),
    )


def start_engines(case: Case, args: argparse.Namespace, notes: list[str]) -> tuple[dict[str, Any], list[Row]]:
    engines: dict[str, Any] = {}
    rows: list[Row] = []
    true_cfg = case.held_out is not None
    if "easel" in args.engines:
        engines["easel"] = EaselEngine(case.folder, case.easel_request)
        rows += easel_rows(case.easel_specs)
    if "diffusers" in args.engines:
        engines["diffusers"] = DiffusersEngine(case.folder, case.diffusers_request, case.transformer_calls)
        rows.append(Row("diffusers", "diffusers exact", None))
        rows += [Row("diffusers", f"diffusers {s.label()}", s) for s in cachedit_settings(args, case, "diffusers")]
    if "sglang" in args.engines:
        python = Path(args.sglang_python)
        reason = sglang_python_unavailable(python)
        if reason is None:
            print(f"starting SGLang ({python}) ...", flush=True)
            try:
                engine = SGLangRows(python, case.folder, case.sglang_request, case.embedded_cfg, args.threads)
            except RowError as exc:
                reason = f"SGLang did not start: {exc}"
            else:
                engines["sglang"] = engine
                rows.append(Row("sglang", "sglang exact", None))
                settings = cachedit_settings(args, case, "sglang")
                rows += [Row("sglang", f"sglang {s.label()}", s) for s in settings]
                if engine.teacache_note:
                    notes.append(f"SGLang {engine.version} TeaCache on FLUX: not run, {engine.teacache_note}")
                if true_cfg:
                    notes.append(
                        "SGLang with true CFG: its cache-dit integration caches the conditional and unconditional "
                        "calls in one context (enable_separate_cfg is not exposed), and it encodes the negative "
                        "prompt at 512 tokens; a residual cached from a pass over the prompt's tokens then meets a "
                        "pass over 512, so a row that caches at all fails (its error is shown)"
                    )
        if reason is not None:
            notes.append(f"no SGLang rows: {reason}")
    return engines, rows


def interleaved(rows: list[Row], shift: int) -> list[Row]:
    """Rows alternating between engines (easel, diffusers, sglang, easel, ...), rotated by `shift`."""
    by_engine = [[row for row in rows if row.engine == engine] for engine in ENGINES]
    order = [group[i] for i in range(max(map(len, by_engine), default=0)) for group in by_engine if i < len(group)]
    shift %= max(len(order), 1)
    return order[shift:] + order[:shift]


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    print(f"\n== {case.name}: {case.description}; threads {torch.get_num_threads()}", flush=True)
    engines, rows = start_engines(case, args, notes)
    try:
        warm = "a green square at the centre on a yellow background" if case.name == "demo" else FLUX_PROMPTS[-1]
        for name, engine in engines.items():  # the exact path and the first cached path of each engine
            for row in [row for row in rows if row.engine == name][:2]:
                try:
                    engine.run(row, warm, 0)
                except Exception as exc:  # noqa: BLE001 - an engine's failure is reported as the row's
                    row.error = f"{type(exc).__name__}: {exc}"
        start = time.perf_counter()
        for index, prompt in enumerate(case.prompts):
            for row in interleaved(rows, index):
                if row.error is not None:
                    continue
                try:
                    seconds, image, skipped = engines[row.engine].run(row, prompt, index)
                except Exception as exc:  # noqa: BLE001
                    row.error = f"{type(exc).__name__}: {exc}"[:400]
                    continue
                row.seconds.append(seconds)
                row.images[index] = np.asarray(image, dtype=np.float32)
                if skipped is not None:
                    row.skipped.append(skipped)
            elapsed = time.perf_counter() - start
            print(f"  prompt {index + 1}/{len(case.prompts)} done ({elapsed:.0f} s)", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    measure(case, rows)
    return {"case": case.name, "description": case.description, "rows": rows, "notes": notes}


# --- metrics and reports ---------------------------------------------------------------------------------------------


def accuracy(images: dict[int, np.ndarray], prompts: list[str], indices: list[int]) -> dict[str, float]:
    """Per attribute, the fraction of the images (of `indices`) that show what their prompt states."""
    present = [index for index in indices if index in images]
    return attribute_accuracy([images[index] for index in present], [prompts[index] for index in present])


def measure(case: Case, rows: list[Row]) -> None:
    exact = {row.engine: row for row in rows if row.exact}
    for row in rows:
        if row.error is None and len(row.images) < len(case.prompts):
            row.error = "missing images"
        reference = exact.get(row.engine)
        if row.error is not None or reference is None or reference.error is not None:
            row.metrics = {}
            continue
        mean = float(np.mean(row.seconds))
        values = [psnr(row.images[i][None], reference.images[i][None]) for i in sorted(row.images)]
        row.metrics = {
            "seconds": mean,
            "speedup": float(np.mean(reference.seconds)) / mean,
            "psnr_db": float(np.mean([min(v, PSNR_CAP_DB) for v in values])),
            "psnr_min_db": float(min(values)),
            "identical": sum(math.isinf(v) for v in values),
            "ssim": float(np.mean([ssim(row.images[i][None], reference.images[i][None]) for i in row.images])),
            "skipped": float(np.mean(row.skipped)) if row.skipped else None,
        }
        if case.held_out is not None:
            for split, held in (("seen", False), ("held_out", True)):
                indices = [i for i, h in enumerate(case.held_out) if h == held]
                row.metrics[f"accuracy_{split}"] = accuracy(row.images, case.prompts, indices)


_SHORT = {"colour": "col", "shape": "shp", "size": "siz", "position": "pos", "background": "bg"}


def print_table(result: dict[str, Any]) -> None:
    rows: list[Row] = result["rows"]
    demo = any("accuracy_seen" in row.metrics for row in rows)
    width = max(len(row.label) for row in rows) + 2
    header = f"{'row':<{width}}{'s/img':>8}{'speed-up':>9}{'PSNR':>8}{'min':>7}{'SSIM':>7}{'skip':>6}"
    if demo:
        header += "  seen " + "".join(f"{_SHORT[a]:>5}" for a in ATTRIBUTES)
        header += "  held " + "".join(f"{_SHORT[a]:>5}" for a in ATTRIBUTES)
    print(f"\n{result['case']}: {result['description']}\n{header}\n{'-' * len(header)}")
    for row in rows:
        m = row.metrics
        if not m:
            print(f"{row.label:<{width}}failed: {row.error or 'its exact row failed'}")
            continue
        quality = f"{'exact':>8}{'':>7}" if row.exact else f"{m['psnr_db']:>8.1f}{m['psnr_min_db']:>7.1f}"
        skip = "n/a" if m["skipped"] is None else f"{m['skipped']:.0%}"
        line = f"{row.label:<{width}}{m['seconds']:>8.3f}{m['speedup']:>8.2f}x{quality}{m['ssim']:>7.3f}{skip:>6}"
        if demo:
            for split in ("seen", "held_out"):
                line += "       " + "".join(f"{m[f'accuracy_{split}'].get(a, math.nan):>5.0%}" for a in ATTRIBUTES)
        print(line)
    for note in result["notes"]:
        print(f"note: {note}")


def frontier(rows: list[Row]) -> list[Row]:
    """The exact row, then the cached rows that no other row beats on both speed-up and PSNR, by speed-up (the exact
    row, 1x at infinite PSNR, beats every cached row that is not faster)."""
    best: list[Row] = []
    cached = [row for row in rows if row.metrics and not row.exact and row.metrics["speedup"] > 1.0]
    for row in sorted(cached, key=lambda r: (-r.metrics["speedup"], -r.metrics["psnr_db"])):
        if not best or row.metrics["psnr_db"] > best[-1].metrics["psnr_db"]:
            best.append(row)
    return [row for row in rows if row.metrics and row.exact] + best[::-1]


def print_frontiers(result: dict[str, Any]) -> None:
    rows: list[Row] = result["rows"]

    def quality(row: Row) -> str:
        return "exact" if row.exact else f"{row.metrics['psnr_db']:.1f} dB"

    print(f"\n{result['case']}: speed-up / PSNR frontier per engine (each against its own exact path)")
    for engine in ENGINES:
        points = frontier([row for row in rows if row.engine == engine])
        if points:
            text = ", ".join(f"{p.metrics['speedup']:.2f}x {quality(p)} ({p.label})" for p in points)
            print(f"  {engine}: {text}")


def best_line(result: dict[str, Any]) -> str | None:
    rows: list[Row] = result["rows"]
    exact = next((row for row in rows if row.engine == "easel" and row.exact and row.metrics), None)

    def best(candidates: list[Row]) -> Row | None:
        return max(candidates, key=lambda row: row.metrics["speedup"], default=None)

    easel = None
    if exact is not None and "accuracy_held_out" in exact.metrics:
        reference = exact.metrics["accuracy_held_out"]
        easel = best(
            [
                row
                for row in rows
                if row.engine == "easel"
                and not row.exact
                and row.metrics
                and row.metrics["psnr_db"] >= PSNR_BAR_DB
                and all(
                    abs(row.metrics["accuracy_held_out"].get(a, 0.0) - reference.get(a, 0.0)) <= ACCURACY_SLACK + 1e-9
                    for a in KEY_ATTRIBUTES
                )
            ]
        )
    cachedit = best(
        [
            row
            for row in rows
            if row.engine == "diffusers" and not row.exact and row.metrics and row.metrics["psnr_db"] >= PSNR_BAR_DB
        ]
    )

    def describe(row: Row | None, engine: str) -> str:
        if row is None:
            return f"{engine}: no row qualifies"
        return f"{row.metrics['speedup']:.2f}x at {row.metrics['psnr_db']:.1f} dB ({row.label})"

    return (
        f"{result['case']} best: Easel {describe(easel, 'easel')} with held-out {'/'.join(KEY_ATTRIBUTES)} within "
        f"{ACCURACY_SLACK * 100:.0f} points of Easel exact, vs cache-dit {describe(cachedit, 'cache-dit')} "
        f"(PSNR >= {PSNR_BAR_DB:.0f} dB)"
    )


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        return value

    return {
        "case": result["case"],
        "description": result["description"],
        "notes": result["notes"],
        "rows": [
            {
                "engine": row.engine,
                "label": row.label,
                "config": dataclasses.asdict(row.config) if isinstance(row.config, CacheDit) else row.config,
                "error": row.error,
                "seconds_each": row.seconds,
                **clean(row.metrics),
            }
            for row in result["rows"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("demo", "flux70m", "all"), default="all")
    parser.add_argument("--prompts", type=int, default=128, help="demo: prompts, half seen and half held-out")
    parser.add_argument("--flux-prompts", type=int, default=2, help="flux70m: prompts")
    parser.add_argument("--steps", type=int, default=28, help="flux70m: denoising steps")
    parser.add_argument("--resolution", type=int, default=256, help="flux70m: image side")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--easel-specs", nargs="+", help="Easel cache specs (default: a sweep per case)")
    parser.add_argument(
        "--cachedit-thresholds", nargs="*", type=float, help=f"DBCache thresholds (default: {CACHEDIT_THRESHOLDS})"
    )
    parser.add_argument(
        "--cachedit-taylorseer", nargs="*", help=f"THRESHOLD:ORDER TaylorSeer rows (default: {CACHEDIT_TAYLORSEER})"
    )
    parser.add_argument(
        "--cachedit-cfg",
        choices=("auto", "separate", "both"),
        default="both",
        help="Diffusers with true CFG: cache-dit's own mode for FluxPipeline, enable_separate_cfg, or both",
    )
    parser.add_argument("--sglang-python", default=str(DEFAULT_SGLANG_PYTHON))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (SGLang's too)")
    parser.add_argument("--cache-dir", default="build/bench", help="where the flux70m folder is kept")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    total = time.perf_counter()
    for name, build in (("demo", demo_case), ("flux70m", flux_case)):
        if args.case in (name, "all"):
            results.append(run_case(build(args), args))
    for result in results:
        print_table(result)
        print_frontiers(result)
    for result in results:
        if result["case"] == "demo":
            print("\n" + best_line(result))
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([to_json(result) for result in results], indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
