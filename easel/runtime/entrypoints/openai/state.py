"""What the routes share: the server's settings, the engine client, stored outputs, video jobs and metrics."""

import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import Request

from easel.runtime.entrypoints.openai.engine_client import EngineClient
from easel.runtime.entrypoints.openai.messages import BatchLimits, ModelInfo
from easel.runtime.entrypoints.openai.metrics import ServerMetrics
from easel.runtime.entrypoints.openai.protocol import APIError
from easel.runtime.entrypoints.openai.storage import OutputStore
from easel.runtime.entrypoints.openai.video_jobs import VideoJobs


@dataclasses.dataclass
class ServeSettings:
    """How `easel serve` was asked to run."""

    model_path: str
    engine_options: dict[str, Any]  # `DiffGenerator.from_pretrained` keyword arguments
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None
    max_queued_requests: int = 32
    api_key: str | None = None
    max_upload_bytes: int = 20 * 2**20
    lora_dir: Path | None = None  # the only folder /v1/set_lora reads LoRA files from; None: it loads none
    lora_paths: list[tuple[Path, float]] = dataclasses.field(default_factory=list)  # --lora-path: (file, strength)
    batch_limits: BatchLimits = BatchLimits()  # --max-batch-size, --max-batch-tokens
    webui: bool = False  # --webui: the Gradio page at /ui

    @property
    def model_name(self) -> str:
        """The name the API knows the model by: --served-model-name, else the model folder's name."""
        return self.served_model_name or Path(self.model_path.rstrip("/")).name


class ServerState:
    """One per app; routes reach it through `get_state`."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        # The adapters of --lora-path, described as `list_loras()` does: the worker loads what it describes.
        loras = [
            {
                "name": path.stem,
                "path": str(path),
                "targets": ["transformer"],
                "active": True,
                "strength": strength,
                "merged": False,
            }
            for path, strength in settings.lora_paths
        ]
        self.engine = EngineClient(
            settings.model_path,
            settings.engine_options,
            settings.max_queued_requests,
            self.metrics,
            loras,
            settings.batch_limits,
        )
        self.store = OutputStore()
        self.videos = VideoJobs()

    def check_model(self, name: str | None) -> None:
        """A request's `model` may be left out or name the served model."""
        if name is not None and name != self.settings.model_name:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def require(self, route: str) -> ModelInfo:
        """The loaded model's info, if it answers `route`; else a 400 saying what it does."""
        info = self.engine.info
        if info is None:
            raise APIError(503, "the model is still loading: retry shortly", "server_error", code="unavailable")
        if route not in info.routes():
            raise APIError(
                400,
                f"{self.settings.model_name} is a {info.task} model ({info.family}): it answers "
                f"{' and '.join(info.routes())}, not {route}",
                code="unsupported_task",
            )
        return info

    def check_loras(self, names: list[str]) -> None:
        """A request's `lora` may name loaded adapters only."""
        loaded = [lora["name"] for lora in self.engine.loras]
        if unknown := [name for name in names if name not in loaded]:
            raise APIError(
                400,
                f"no LoRA adapter named {unknown}; loaded: {loaded} (load one with /v1/set_lora)",
                param="lora",
                code="lora_not_found",
            )


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def check_api_key(request: Request) -> None:
    """With --api-key, every /v1 route needs `Authorization: Bearer KEY`."""
    key = get_state(request).settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "this server needs an API key: send Authorization: Bearer KEY", code="invalid_api_key")
