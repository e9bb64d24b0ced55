"""One DiT step (bf16, batch 1) of FLUX.1-dev, Qwen-Image, Wan2.1-1.3B and Z-Image: Diffusers against Easel's options.

    python benchmarks/bench_gpu.py                             # on the H200: every case, 7 minutes at most
    python benchmarks/bench_gpu.py --cases flux,wan --json /tmp/bench.json
    PYTHONPATH=/path/to/diffusers-0.42.1 python benchmarks/bench_gpu.py        # diffusers carried, not installed
    python benchmarks/bench_gpu.py --smoke                     # CPU, fp32, tiny models: every path but CUDA's
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --smoke --cases flux     # the Triton columns too (slow)

Full-size DiTs are built in memory with random weights (speed does not depend on the values): parameters on the meta
device, then materialized on the GPU; Easel's model is assigned Diffusers' tensors (load_state_dict(strict=True,
assign=True)), so the two hold one copy of the weights and compute on the same numbers. Columns: Diffusers eager and
regionally compiled; Easel eager (torch kernels, torch_sdpa), + Triton kernels, + flash_attn (if installed), + regional
compile, + fp8 (quantize_dit on the compiled model, in place, so last); CUDA graphs are not built. Each time is the
median of --repeats forwards after --warmup ones under inference_mode, synchronized around each; the warm-up (compile
included) is timed apart. FLOPs = 2 x the MACs of every matmul of one forward: the linears' (tokens x in x out) and
attention's QK^T and PV (4 x B x H x Lq x Lk x Dh), counted by torch's FlopCounterMode on a meta-device copy (no
memory, no time). PSNR = 10 log10(peak^2 / MSE) against Easel eager's output, peak = max |Easel eager output|.
Columns that would end past --budget-s (7 minutes) are skipped, saying so. Easel itself imports diffusers, so without
it nothing runs; a Diffusers model class that fails to import (or --no-diffusers) skips the Diffusers columns with a
note. --smoke compiles with backend "eager" (Dynamo's tracing, fullgraph checked, no inductor codegen) unless
--compile-backend says otherwise, and runs the Triton columns only under TRITON_INTERPRET=1.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import importlib.util
import inspect
import json
import math
import operator
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

try:  # before Easel: its layers import diffusers too (kernel_backend -> server_args -> pipeline_configs.base)
    import diffusers
except ImportError as error:
    sys.exit(
        f"diffusers does not import ({error}). Easel itself needs it, so nothing can run: carry diffusers==0.42.1 "
        "(pure Python) as a wheel (pip install --no-deps) or put it on PYTHONPATH."
    )

from easel.configs.models.dits.flux import FluxDitConfig
from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.configs.models.dits.z_image import ZImageDitConfig
from easel.errors import EaselError
from easel.runtime.layers import set_attention_backend, set_kernel_backend
from easel.runtime.layers.quantization import quantize_dit
from easel.runtime.models.dits.flux import FluxTransformer2DModel
from easel.runtime.models.dits.qwen_image import QwenImageTransformer2DModel
from easel.runtime.models.dits.regional_compile import compile_repeated_blocks
from easel.runtime.models.dits.wanvideo import WanTransformer3DModel
from easel.runtime.models.dits.z_image import ZImageTransformer2DModel

Forward = Callable[[], torch.Tensor]


@dataclasses.dataclass
class Case:
    """One DiT at one resolution: how to build its inputs, and a zero-argument forward of each engine on them."""

    title: str
    config: Any
    easel_cls: type
    diffusers_name: str
    inputs: Callable[[str], dict]  # device -> tensors both engines take (as the pipelines build them)
    easel: Callable[[nn.Module, dict], Forward]  # rotary tables built here once per request, as Easel's pipeline does
    diffusers: Callable[[nn.Module, dict], Forward]
    step_guess_s: float  # for the time budget, until a column of the case has measured one
    profile: bool = False


def _randn(device: str, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


def flux_case(config: FluxDitConfig, rows: int, cols: int, text: int, dtype: torch.dtype, guess: float) -> Case:
    def inputs(device: str) -> dict:
        ids = torch.zeros(rows, cols, 3, device=device)  # (0, row, col), as FluxPipeline._prepare_latent_image_ids
        ids[..., 1] = torch.arange(rows, device=device)[:, None]
        ids[..., 2] = torch.arange(cols, device=device)[None, :]
        return dict(
            hidden_states=_randn(device, dtype, 1, rows * cols, config.in_channels),
            encoder_hidden_states=_randn(device, dtype, 1, text, config.joint_attention_dim),
            pooled_projections=_randn(device, dtype, 1, config.pooled_projection_dim),
            timestep=torch.tensor([0.5], device=device),
            guidance=torch.tensor([3.5], device=device) if config.guidance_embeds else None,
            txt_ids=torch.zeros(text, 3, device=device),
            img_ids=ids.reshape(rows * cols, 3),
        )

    def easel(model: nn.Module, x: dict) -> Forward:
        freqs_cis = model.rotary_emb(torch.cat([x["txt_ids"], x["img_ids"]]))
        args = {key: value for key, value in x.items() if not key.endswith("_ids")}
        return lambda: model(**args, freqs_cis=freqs_cis)

    title = f"FLUX.1-dev {rows * 16}x{cols * 16} ({rows * cols} image + {text} text tokens)"
    return Case(title, config, FluxTransformer2DModel, "FluxTransformer2DModel", inputs, easel, _diffusers_call, guess)


def qwen_case(config: QwenImageDitConfig, rows: int, cols: int, text: int, dtype: torch.dtype, guess: float) -> Case:
    shapes = [(1, rows, cols)]

    def inputs(device: str) -> dict:
        return dict(
            hidden_states=_randn(device, dtype, 1, rows * cols, config.in_channels),
            encoder_hidden_states=_randn(device, dtype, 1, text, config.joint_attention_dim),
            timestep=torch.tensor([0.5], device=device),
        )

    def easel(model: nn.Module, x: dict) -> Forward:
        freqs_cis = model.rotary_emb(shapes, text, x["hidden_states"].device)
        return lambda: model(**x, freqs_cis=freqs_cis, img_shapes=shapes)

    def reference(model: nn.Module, x: dict) -> Forward:
        return lambda: model(**x, img_shapes=[shapes], return_dict=False)[0]

    title = f"Qwen-Image {rows * 16}x{cols * 16} ({rows * cols} image + {text} text tokens)"
    name = "QwenImageTransformer2DModel"
    return Case(title, config, QwenImageTransformer2DModel, name, inputs, easel, reference, guess)


def wan_case(config: WanDitConfig, latent: tuple[int, int, int], text: int, dtype: torch.dtype, guess: float) -> Case:
    def inputs(device: str) -> dict:
        return dict(
            hidden_states=_randn(device, dtype, 1, config.in_channels, *latent),
            timestep=torch.tensor([500.0], device=device),
            encoder_hidden_states=_randn(device, dtype, 1, text, config.text_dim),
        )

    def easel(model: nn.Module, x: dict) -> Forward:
        freqs_cis = model.rotary_emb(*latent, device=x["hidden_states"].device)
        return lambda: model(**x, freqs_cis=freqs_cis)

    frames, height, width = latent
    tokens = math.prod(latent) // 4
    title = f"Wan2.1-T2V-1.3B {height * 8}x{width * 8}x{(frames - 1) * 4 + 1} ({tokens} video + {text} text tokens)"
    return Case(title, config, WanTransformer3DModel, "WanTransformer3DModel", inputs, easel, _diffusers_call, guess)


def z_image_case(config: ZImageDitConfig, size: int, text: int, dtype: torch.dtype, guess: float) -> Case:
    latent = (1, size, size)

    def inputs(device: str) -> dict:
        return dict(
            x=_randn(device, dtype, 1, config.in_channels, *latent),
            t=torch.tensor([0.5], device=device),
            cap_feats=[_randn(device, dtype, text, config.cap_feat_dim)],  # one prompt's unpadded tokens
        )

    def easel(model: nn.Module, x: dict) -> Forward:
        layout = model.rotary_emb([text], latent, device=x["x"].device)
        return lambda: model(**x, layout=layout)

    def reference(model: nn.Module, x: dict) -> Forward:  # Diffusers takes and returns lists of (C, F, H, W)
        return lambda: torch.stack(model(list(x["x"]), x["t"], x["cap_feats"], return_dict=False)[0])

    title = f"Z-Image-Turbo {size * 8}x{size * 8} ({size * size // 4} image + {text} caption tokens)"
    return Case(title, config, ZImageTransformer2DModel, "ZImageTransformer2DModel", inputs, easel, reference, guess)


def _diffusers_call(model: nn.Module, x: dict) -> Forward:
    return lambda: model(**x, return_dict=False)[0]


# Wan2.1-T2V-1.3B's config.json (WanDitConfig's defaults are 14B's).
WAN_1_3B = WanDitConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30)


def build_cases(smoke: bool, dtype: torch.dtype) -> dict[str, Case]:
    if smoke:  # easel.testing's tiny configs, a few dozen tokens: the code paths of the full run in seconds
        # Imported here: easel.testing pulls in transformers' models, which the GPU run has no need of.
        from easel.testing.flux import TINY_FLUX_TRANSFORMER_CONFIG
        from easel.testing.qwen_image import TINY_QWEN_IMAGE_TRANSFORMER_CONFIG
        from easel.testing.wan import TINY_WAN_TRANSFORMER_CONFIG
        from easel.testing.z_image import TINY_Z_IMAGE_TRANSFORMER_CONFIG

        cases = dict(
            flux=flux_case(FluxDitConfig(**TINY_FLUX_TRANSFORMER_CONFIG, guidance_embeds=True), 4, 6, 7, dtype, 0.01),
            qwen=qwen_case(QwenImageDitConfig(**TINY_QWEN_IMAGE_TRANSFORMER_CONFIG), 4, 6, 7, dtype, 0.01),
            wan=wan_case(WanDitConfig(**TINY_WAN_TRANSFORMER_CONFIG), (3, 4, 6), 16, dtype, 0.01),
            # 64 image and 32 caption tokens, multiples of 32 as in the full case: Z-Image's unpadded path
            z_image=z_image_case(ZImageDitConfig(**TINY_Z_IMAGE_TRANSFORMER_CONFIG), 16, 32, dtype, 0.01),
        )
        for case in cases.values():
            case.title = f"tiny {case.title}"
    else:
        cases = dict(
            # FluxDitConfig's defaults are FLUX.1's architecture; FLUX.1-dev is the guidance-distilled variant.
            flux=flux_case(dataclasses.replace(FluxDitConfig(), guidance_embeds=True), 64, 64, 512, dtype, 0.17),
            qwen=qwen_case(QwenImageDitConfig(), 83, 83, 256, dtype, 0.34),  # 1328 / 8 / 2 = 83
            # 81 frames at 480x832 are 21x60x104 latents; UMT5's 512 (padded) tokens.
            wan=wan_case(WAN_1_3B, (21, 60, 104), 512, dtype, 0.63),
            # Z-Image-Turbo's config.json: the defaults but for axes_lens; a prompt of 128 tokens (not padded).
            z_image=z_image_case(ZImageDitConfig(axes_lens=(1536, 512, 512)), 128, 128, dtype, 0.15),
        )
    cases["flux"].profile = True
    return cases


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built here get meta parameters but real buffers and plain tensors (Qwen-Image's rotary tables are
    attributes Diffusers computes in __init__, which torch.device("meta") would leave empty), as accelerate's
    init_empty_weights: big weights cost nothing until materialized on the GPU."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def materialize(model: nn.Module, device: str, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Meta parameters to random ones on `device` in `dtype` (modules named in keep_fp32 stay float32, as Diffusers'
    from_pretrained keeps Wan's `_keep_in_fp32_modules`); variance-preserving values so outputs stay finite."""
    torch.manual_seed(0)
    for module_name, module in model.named_modules():
        fp32 = any(part in keep_fp32 for part in module_name.split("."))
        for name, tensor in list(module._parameters.items()):
            if tensor is None:
                continue
            value = torch.randn(tensor.shape, device=device, dtype=torch.float32 if fp32 else dtype)
            if tensor.ndim >= 2:
                value /= math.sqrt(tensor.numel() / tensor.shape[0])  # 1 / sqrt(fan_in)
            else:  # a norm's weight near 1, a bias near 0
                value = 1 + 0.1 * value if name == "weight" else 0.02 * value
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                cast = buffer.is_floating_point() and not fp32
                module._buffers[name] = buffer.to(device=device, dtype=dtype if cast else buffer.dtype)
    return model.eval()


def diffusers_class(case: Case, skip: bool) -> tuple[type | None, str]:
    """Diffusers' model class, or None and why: a lazily imported model module can fail on its own."""
    if skip:
        return None, "--no-diffusers"
    try:
        return getattr(diffusers, case.diffusers_name), ""
    except Exception as error:
        return None, f"diffusers.{case.diffusers_name} does not import ({type(error).__name__}: {error})"


def build_models(case: Case, device: str, dtype: torch.dtype, skip: bool) -> tuple[nn.Module, nn.Module | None, str]:
    """(Easel DiT, Diffusers DiT or None, note). With Diffusers, Easel's model is assigned its tensors: one copy."""
    with torch.device("meta"):
        dit = case.easel_cls(case.config)
    reference_cls, note = diffusers_class(case, skip)
    if reference_cls is None:
        return materialize(dit, device, dtype).requires_grad_(False), None, note
    # Easel's config fields carry Diffusers' names; the base class adds some a model may not take (out_channels).
    names = inspect.signature(reference_cls.__init__).parameters.keys() & set(vars(case.config))
    with parameters_on_meta():
        reference = reference_cls(**{name: getattr(case.config, name) for name in names})
    keep = tuple(getattr(reference_cls, "_keep_in_fp32_modules", None) or ())
    materialize(reference, device, dtype, keep)
    dit.load_state_dict(reference.state_dict(), strict=True, assign=True)
    # Easel's loader casts the whole DiT (model.to(dtype)); only Wan's float32 modules get copies of their own.
    return dit.to(dtype).eval().requires_grad_(False), reference, "weights shared with Diffusers' model"


def count_flops(case: Case, dtype: torch.dtype) -> float | None:
    """2 x MACs of every matmul of one forward, by FlopCounterMode on a meta-device copy (shapes only)."""
    set_kernel_backend("torch")
    set_attention_backend("torch_sdpa")
    try:
        with torch.device("meta"):
            model = case.easel_cls(case.config).to(dtype)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            case.easel(model, case.inputs("meta"))()
        return float(counter.get_total_flops())
    except Exception as error:  # a model with a data-dependent op on meta: the rest of the benchmark still runs
        print(f"  FLOP count failed ({type(error).__name__}: {error}); TFLOP/s left out")
        return None


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (output.float() - reference.float()).pow(2).mean().item()
    peak = reference.float().abs().max().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


class Bench:
    """The state shared by one case's columns: timing settings, the clock, the reference outputs."""

    def __init__(self, args: argparse.Namespace, device: str, start: float):
        self.args, self.start, self.cuda = args, start, device == "cuda"
        self.refs: dict[str, torch.Tensor] = {}  # "diffusers" and "easel": the eager outputs
        self.step_s, self.flops = 0.0, None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def skip_reason(self, compiles: bool) -> str | None:
        """Why a column would overrun the time budget, from this case's last step time and a compile guess."""
        estimate = (self.args.warmup + self.args.repeats) * self.step_s + (self.args.compile_guess_s if compiles else 0)
        elapsed = time.perf_counter() - self.start
        if elapsed + estimate > self.args.budget_s:
            return f"time budget: {elapsed:.0f} s elapsed + ~{estimate:.0f} s > {self.args.budget_s:.0f} s"
        return None

    def column(self, label: str, forward: Forward, setup: Callable | None = None, compiles=False, ref="") -> dict:
        """Runs setup, times `forward`, and compares its output with the references; never raises (a failing
        column must not cost the others on a one-shot GPU run). ref: store the output as this reference."""
        result: dict[str, Any] = {"column": label}
        if reason := self.skip_reason(compiles):
            result["skipped"] = reason
        else:
            try:
                self._time(result, forward, setup, compiles, ref)
            except EaselError as error:  # an option this machine lacks (Triton, flash_attn, fp8): its own message
                result["skipped"] = str(error)
            except Exception as error:
                traceback.print_exc()
                result["error"] = f"{type(error).__name__}: {error}"[:300]
            if self.cuda:
                torch.cuda.empty_cache()
        print(f"  {label}: " + ", ".join(f"{key} {_fmt(value)}" for key, value in result.items() if key != "column"))
        return result

    def _time(self, result: dict, forward: Forward, setup: Callable | None, compiles: bool, ref: str) -> None:
        args = self.args
        with torch.inference_mode():
            began = time.perf_counter()
            if setup is not None:
                setup()
                result["setup_s"] = time.perf_counter() - began
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            for _ in range(args.warmup):
                forward()
            self.sync()
            result["warmup_s"] = time.perf_counter() - began
            times = []
            for _ in range(args.repeats):
                self.sync()
                began = time.perf_counter()
                output = forward()
                self.sync()
                times.append(time.perf_counter() - began)
        if compiles:  # later columns budget what compiling took here, if more than guessed
            args.compile_guess_s = max(args.compile_guess_s, result["warmup_s"])
        self.step_s = statistics.median(times)
        result["ms"] = self.step_s * 1e3
        if self.flops:
            result["tflops"] = self.flops / self.step_s / 1e12
        if self.cuda:
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["finite"] = bool(output.isfinite().all())
        result["max_abs_output"] = output.abs().max().item()  # the scale the differences below are read against
        if "diffusers" in self.refs:
            result["max_abs_diff_vs_diffusers"] = (output.float() - self.refs["diffusers"].float()).abs().max().item()
        if "easel" in self.refs:
            result["psnr_vs_easel_db"] = psnr(output, self.refs["easel"])
        if ref:
            self.refs[ref] = output

    def profile(self, label: str, forward: Forward) -> list[dict]:
        """The top CUDA kernels by total device time over 3 forwards (CPU ops by self time on the CPU)."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                forward()
            self.sync()
        events = list(prof.key_averages())
        # torch 2.11 names it device_time_total, older releases cuda_time_total; kernels have no CPU time of their own.
        name = "device_time_total" if events and hasattr(events[0], "device_time_total") else "cuda_time_total"
        kernels = [event for event in events if getattr(event, name, 0) > 0 and event.cpu_time_total == 0]
        if not kernels:  # a CPU smoke run
            kernels, name = events, "self_cpu_time_total"
        device_us = operator.attrgetter(name)
        kernels.sort(key=device_us, reverse=True)
        total = sum(device_us(event) for event in kernels) or 1
        rows = [
            dict(name=event.key, ms=device_us(event) / 1e3 / 3, calls=event.count // 3, share=device_us(event) / total)
            for event in kernels[:15]
        ]
        kind = "CUDA kernels by device time" if self.cuda else "CPU ops by self CPU time (no GPU)"
        print(f"\n  Profile, {label}: top {len(rows)} {kind}, per forward")
        for row in rows:
            print(f"    {row['ms']:9.3f} ms {row['share']:6.1%} x{row['calls']:<4d} {row['name'][:90]}")
        return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def diffusers_columns(bench: Bench, reference: nn.Module, forward: Forward) -> list[dict]:
    backend = bench.args.compile_backend
    compile_blocks = lambda: reference.compile_repeated_blocks(fullgraph=True, backend=backend)  # noqa: E731
    return [
        bench.column("Diffusers eager", forward, ref="diffusers"),
        bench.column("Diffusers + regional compile", forward, setup=compile_blocks, compiles=True),
    ]


def uncompile(dit: nn.Module) -> None:
    """Undoes compile_repeated_blocks: it set each block's forward on the instance, over the class's."""
    for block in dit.repeated_blocks():
        block.__dict__.pop("forward", None)


def easel_columns(bench: Bench, case: Case, dit: nn.Module, forward: Forward) -> tuple[list[dict], list]:
    columns, profiles = [], []

    def add(label: str, setup: Callable, compiles: bool = False, ref: str = "", profile: bool = False) -> bool:
        columns.append(bench.column(label, forward, setup, compiles, ref))
        if profile and case.profile and "ms" in columns[-1]:
            profiles.append(dict(column=label, kernels=bench.profile(label, forward)))
        return "ms" in columns[-1]

    exact = lambda: (set_kernel_backend("torch"), set_attention_backend("torch_sdpa"))  # noqa: E731
    add("Easel eager", exact, ref="easel", profile=True)
    triton = add("Easel + Triton", lambda: set_kernel_backend("triton"), profile=True)
    set_kernel_backend("triton" if triton else "torch")  # what the later columns build on
    name = "Easel + Triton" if triton else "Easel (torch kernels)"
    add(f"{name} + flash_attn", lambda: set_attention_backend("flash_attn"))
    set_attention_backend("torch_sdpa")
    if triton and not bench.cuda:  # Dynamo cannot trace Triton's CPU interpreter (it reads storage pointers)
        set_kernel_backend("torch")
        name = "Easel (torch kernels: Dynamo cannot trace Triton's interpreter)"
    backend = bench.args.compile_backend
    compile_blocks = lambda: compile_repeated_blocks(dit, backend=backend)  # noqa: E731
    compiled = add(f"{name} + regional compile", compile_blocks, compiles=True)
    if not compiled:
        uncompile(dit)
    if not compiled and triton and bench.cuda and "error" in columns[-1]:
        # Dynamo tracing Easel's Triton kernels is unverified (no GPU here yet): still measure compile on torch's.
        set_kernel_backend("torch")
        name = "Easel (torch kernels: Triton + compile failed)"
        compiled = add(f"{name} + regional compile", compile_blocks, compiles=True)
        if not compiled:  # fp8 then runs eager, rather than through a compile that failed
            uncompile(dit)
    add(f"{name} + {'compile + ' if compiled else ''}fp8", lambda: quantize_dit(dit, "fp8"), compiles=compiled)
    columns.append({"column": "CUDA graphs", "skipped": "n/a (not built)"})
    return columns, profiles


def bench_case(key: str, case: Case, args: argparse.Namespace, device: str, dtype: torch.dtype, start: float) -> dict:
    began = time.perf_counter()
    print(f"\n## {case.title}")
    bench = Bench(args, device, start)
    bench.step_s, bench.flops = case.step_guess_s, count_flops(case, dtype)
    if bench.flops:
        print(f"  {bench.flops / 1e12:.4g} TFLOP per step")
    dit, reference, note = build_models(case, device, dtype, args.no_diffusers)
    print(f"  built in {time.perf_counter() - began:.1f} s ({note})")
    inputs = case.inputs(device)
    columns = []
    if reference is not None:
        columns += diffusers_columns(bench, reference, case.diffusers(reference, inputs))
        del reference  # Easel's model keeps the shared weights; the Diffusers graphs go with the module
    else:
        columns += [{"column": name, "skipped": note} for name in ("Diffusers eager", "Diffusers + regional compile")]
    _free()
    easel, profiles = easel_columns(bench, case, dit, case.easel(dit, inputs))
    del dit
    _free()
    seconds = time.perf_counter() - began
    print(f"  case done in {seconds:.1f} s ({time.perf_counter() - start:.0f} s since start)")
    columns += easel
    return dict(key=key, title=case.title, flops=bench.flops, seconds=seconds, columns=columns, profiles=profiles)


def _free() -> None:
    gc.collect()
    torch._dynamo.reset()  # compiled graphs and their guards would keep the old modules' memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def markdown(result: dict) -> str:
    base = next((c.get("ms") for c in result["columns"] if c["column"] == "Diffusers eager"), None)
    lines = [
        f"### {result['title']}" + (f": {result['flops'] / 1e12:.4g} TFLOP per step" if result["flops"] else ""),
        "| column | ms / step | vs Diffusers eager | TFLOP/s | peak GiB | warm-up s | max abs diff vs Diffusers eager "
        "| PSNR vs Easel eager (dB) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["columns"]:
        cell = functools.partial(_cell, c)
        ratio = f"{c['ms'] / base:.3f}" if base and "ms" in c else "-"
        note = c.get("skipped") or c.get("error") or ("" if c.get("finite", True) else "non-finite output")
        lines.append(
            f"| {c['column']} | {cell('ms', '.1f')} | {ratio} | {cell('tflops', '.3g')} | {cell('peak_gib', '.1f')} "
            f"| {cell('warmup_s', '.1f')} | {cell('max_abs_diff_vs_diffusers', '.3g')} "
            f"| {cell('psnr_vs_easel_db', '.1f')} | {note.replace('|', '/')[:160]} |"
        )
    return "\n".join(lines)


def _cell(column: dict, key: str, spec: str) -> str:
    return f"{column[key]:{spec}}" if key in column else "-"


def header(device: str, args: argparse.Namespace) -> dict:
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "not installed"
    flash_attn = [name for name in ("flash_attn_interface", "flash_attn") if importlib.util.find_spec(name)]
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        gpu=torch.cuda.get_device_name() if device == "cuda" else "none (CPU smoke run)",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton,
        diffusers=diffusers.__version__,
        flash_attn=", ".join(flash_attn) or "not installed",
        settings=f"{'float32' if args.smoke else 'bfloat16'}, batch 1, {args.warmup} warm-up + {args.repeats} timed "
        f"forwards per column, compile backend {args.compile_backend}, budget {args.budget_s:.0f} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, float32, tiny configs")
    parser.add_argument("--cases", default="flux,qwen,wan,z_image", help="comma-separated subset, in order")
    parser.add_argument("--warmup", type=int, default=None, help="untimed forwards per column (2; smoke 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per column (5; smoke 2)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; smoke eager)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip columns that would end past this")
    parser.add_argument("--compile-guess-s", type=float, default=None, help="budgeted per compile (30; smoke 5)")
    parser.add_argument("--no-diffusers", action="store_true", help="Easel's columns alone (random weights of its own)")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    smoke = args.smoke
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    args.repeats = args.repeats if args.repeats is not None else (2 if smoke else 5)
    args.compile_backend = args.compile_backend or ("eager" if smoke else "inductor")
    args.compile_guess_s = args.compile_guess_s if args.compile_guess_s is not None else (5.0 if smoke else 30.0)

    start = time.perf_counter()
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --smoke")
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    if smoke:  # tiny ops: a second thread only adds spin-waits, which swamp the times (7 ms per layer norm)
        torch.set_num_threads(1)
    info = header(device, args)
    print("# Easel DiT step benchmark\n" + "\n".join(f"- {key}: {value}" for key, value in info.items()))
    cases = build_cases(smoke, dtype)
    unknown = [key for key in args.cases.split(",") if key not in cases]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(cases)}")
    results = []
    for key in args.cases.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"\n## {cases[key].title}: skipped, time budget of {args.budget_s:.0f} s spent")
            continue
        results.append(bench_case(key, cases[key], args, device, dtype, start))

    print(f"\n# Results ({time.perf_counter() - start:.0f} s in all)\n")
    print("\n\n".join(markdown(result) for result in results))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(dict(header=info, cases=results), file, indent=1, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
