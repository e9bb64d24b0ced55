"""The HTTP front end of `easel serve`: a FastAPI app over the worker process, run by uvicorn.

Errors of every kind (ours, FastAPI's validation, unknown routes, bugs) answer in OpenAI's error shape, and every
answer is counted in /metrics. /health and /metrics never wait on the worker, so they answer during a generation.
"""

import asyncio
import contextlib
import logging
import sys
import time

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel.runtime.entrypoints.openai import images, loras, videos
from easel.runtime.entrypoints.openai.protocol import APIError, ModelCard, ModelList, validation_error
from easel.runtime.entrypoints.openai.state import ServerState, ServeSettings, check_api_key, get_state

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 3  # how long open responses get to finish on Ctrl-C / SIGTERM


def create_app(state: ServerState) -> FastAPI:
    """The app; its lifespan starts the worker (which then loads the model) and stops it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        yield
        await state.engine.stop()
        state.store.close()

    app = FastAPI(title="Easel", lifespan=lifespan, openapi_url=None)
    app.state.server = state
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(ObserveMiddleware, state=state)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    models = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])
    models.add_api_route("/models", list_models, methods=["GET"])
    for router in (
        models,
        images.router,
        videos.router,
        loras.router,
    ):  # each with its prefix: metrics name routes in full
        app.include_router(router)
    if state.settings.webui:
        from easel.runtime.entrypoints.openai.webui import mount_webui  # Gradio is imported with --webui only

        mount_webui(app, state)
    return app


async def health(request: Request) -> JSONResponse:
    """200 while requests can be served, 503 while the worker starts, restarts, or could not load the model."""
    engine = get_state(request).engine
    return JSONResponse(engine.health(), status_code=200 if engine.ready else 503)


async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(get_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def list_models(request: Request) -> ModelList:
    state = get_state(request)
    return ModelList(data=[ModelCard(id=state.settings.model_name, created=state.created)])


class ObserveMiddleware:
    """Counts every answer by route and status, and times it; a bug in a route answers 500 in OpenAI's shape.

    Plain ASGI rather than `app.middleware("http")`: Starlette's BaseHTTPMiddleware hides the client's disconnect
    from the routes (`request.is_disconnected()` stays False), and a request whose client hung up must stop its job.
    """

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), []

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as error:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            if status:  # the answer had begun: it cannot turn into an error now
                raise
            error_response = _error_response(APIError(500, f"{type(error).__name__}: {error}", "server_error"))
            await error_response(scope, receive, observed_send)
        route = scope.get("route")
        path = route.path if route is not None else "unmatched"  # not the raw path: ids would make endless series
        code = str(status[0]) if status else "499"  # no answer at all: the client left first
        self.state.metrics.requests.inc(scope["method"], path, code)
        self.state.metrics.request_seconds.observe(time.perf_counter() - start, path)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return _error_response(error)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return _error_response(validation_error(error.errors()))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = f"no route {request.method} {request.url.path}" if error.status_code == 404 else str(error.detail)
    return _error_response(APIError(error.status_code, message))


def run_server(settings: ServeSettings) -> int:
    """Serves until Ctrl-C or SIGTERM; returns 2 when the model could not be loaded."""
    return asyncio.run(_serve(settings))


async def _serve(settings: ServeSettings) -> int:
    state = ServerState(settings)
    level = logging.getLogger().getEffectiveLevel()
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn logs through the logging `easel` set up, at its level
        access_log=level <= logging.INFO,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config, state)
    announcer = asyncio.create_task(_announce(state, server))
    try:
        await server.serve()
    finally:
        announcer.cancel()
    return 2 if state.engine.failure else 0


class _Server(uvicorn.Server):
    """uvicorn, which on Ctrl-C / SIGTERM first stops the worker, so that the requests it holds answer 503 at once
    rather than being cut off when the graceful shutdown times out."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None) -> None:
        await self.state.engine.stop()
        await super().shutdown(sockets)


async def _announce(state: ServerState, server: uvicorn.Server) -> None:
    """Prints the one ready line once the model is loaded and uvicorn listens; stops the server if the model could
    not be loaded (at start, or when a restarted worker fails)."""
    engine = state.engine
    while not (engine.info is not None and server.started) and not engine.failed.is_set():
        await asyncio.sleep(0.05)
    if not engine.failed.is_set():
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        print(f"easel: serving {state.settings.model_name} on http://{host}:{port}", flush=True)
        await engine.failed.wait()
    print(f"easel: error: {engine.failure}", file=sys.stderr)
    server.should_exit = True
