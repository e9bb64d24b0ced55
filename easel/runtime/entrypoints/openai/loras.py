"""/v1 LoRA routes (named as SGLang Diffusion names them): load and choose adapters, merge them into the weights or
back, and list them. Each change runs in the worker between generations; files are read from --lora-dir only."""

import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from easel.runtime.entrypoints.openai.messages import LoRAJob, LoRASpec
from easel.runtime.entrypoints.openai.protocol import APIError, LoRAList, SetLoRARequest
from easel.runtime.entrypoints.openai.state import ServerState, check_api_key, get_state

router = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])


@router.post("/set_lora")
async def set_lora(body: SetLoRARequest, request: Request) -> LoRAList:
    """Makes the named adapters the active set (an empty list: none), loading those given a `lora_path` first."""
    state = get_state(request)
    adapters = [LoRASpec(*fields) for fields in body.adapters()]
    lora_dir = state.settings.lora_dir
    if lora_dir is None and any(adapter.path is not None for adapter in adapters):
        raise APIError(
            400,
            "this server loads no LoRA files: start it with --lora-dir DIR to load files from DIR",
            param="lora_path",
            code="lora_dir_not_set",
        )
    return await _run(state, LoRAJob(_job_id(), "set", adapters, str(lora_dir) if lora_dir else None))


@router.post("/merge_lora_weights")
async def merge_lora_weights(request: Request) -> LoRAList:
    """Writes the active adapters into the weights: no per-step cost; set_lora then re-merges."""
    state = get_state(request)
    return await _run(state, LoRAJob(_job_id(), "merge"))


@router.post("/unmerge_lora_weights")
async def unmerge_lora_weights(request: Request) -> LoRAList:
    """Restores the original weights; the active adapters apply at run time again."""
    state = get_state(request)
    return await _run(state, LoRAJob(_job_id(), "unmerge"))


@router.get("/list_loras")
async def list_loras(request: Request) -> LoRAList:
    """The adapters as the worker last reported them: answered at once, even during a generation."""
    state = get_state(request)
    return _lora_list(state.engine.loras, state.settings.lora_dir)


async def _run(state: ServerState, job: LoRAJob) -> LoRAList:
    done = await state.engine.submit(job)
    return _lora_list(done.loras, state.settings.lora_dir)


def _lora_list(loras: list[dict[str, Any]], lora_dir: Path | None) -> LoRAList:
    # Paths inside --lora-dir are shown as clients give them: relative to it, not as the server's own paths.
    shown = [{**lora, "path": _relative(Path(lora["path"]), lora_dir)} for lora in loras]
    return LoRAList(
        data=shown,
        active={lora["name"]: lora["strength"] for lora in loras if lora["active"]},
        merged=any(lora["merged"] for lora in loras),
    )


def _relative(path: Path, lora_dir: Path | None) -> str:
    return str(path.relative_to(lora_dir) if lora_dir is not None and path.is_relative_to(lora_dir) else path)


def _job_id() -> str:
    return f"lora_{uuid.uuid4().hex}"
