"""The HTTP service: `create_app(config)` -> a FastAPI app around one Predictor.

    GET  /               the web page (static/, no CDN: every asset is served from here)
    POST /predict        one image: multipart field `file`, JSON {"image": base64}, or the raw bytes
    POST /predict/batch  several images: multipart fields `files` (or `file`), or JSON {"images": [...]}
    GET  /health         liveness, and what dynamic batching has done
    GET  /info           classes, architecture, metrics, image size, limits
    GET  /docs           OpenAPI docs (Swagger UI from local files), /openapi.json

A prediction is exactly one item of `visiontune predict --format json`. Bad input is a 4xx with
{"error": "..."} naming the problem (413 too large, 422 not a readable image, 401 wrong key, 400 a
Host the server was not started for, 403 a post from another site's page); a 503 with Retry-After
means the pixel budget (budget.py) stayed full. Nothing a client sends stops the server or stalls
the event loop: JSON parsing, base64 and image decoding run in worker threads. The model is loaded
once (by the caller, or the lifespan) and runs only in the batcher's thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from visiontune.config import check_choice, check_range
from visiontune.data.transforms import pixel_transform
from visiontune.errors import ConfigError, ImageError, ImageTooLargeError, ModelError, VisiontuneError
from visiontune.io import json_safe
from visiontune.predict.onnx_backend import OnnxModel
from visiontune.predict.predictor import BACKENDS, Prediction, Predictor
from visiontune.serve.batching import DynamicBatcher
from visiontune.serve.budget import RETRY_AFTER_S, TRIM_PIXELS, PixelBudget, ServerBusyError, return_freed_memory
from visiontune.serve.guards import LOOPBACK_HOSTS, HostGuard, normal_origin
from visiontune.serve.uploads import BodyLimit, decode_base64, decode_upload, pixels_to_decode
from visiontune.version import __version__

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# the page loads nothing from elsewhere; previews are blob: URLs
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; object-src 'none'"
UPLOAD_HELP = 'send the image as multipart field \'file\', as JSON {"image": "<base64>"}, or as the raw body'


@dataclass(frozen=True)
class ServeConfig:
    """How the service loads its model and what it accepts; `api_key=None` leaves predictions open.

    `max_request_mb` bounds a whole /predict/batch body (all its images); `pixel_budget` the pixels
    all requests together may be decoding at once (an image waits up to `busy_wait_s` for room,
    then 503). `allowed_hosts` are the Host names answered ("*": any); `allow_origins` the other
    sites' origins ("https://app.example") whose pages may POST here.
    """

    model: str = ""
    backend: str = "torch"
    device: str = "cpu"
    api_key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_files: int = 32
    max_request_mb: float = 50.0
    pixel_budget: int = 100_000_000
    busy_wait_s: float = 10.0
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allow_origins: tuple[str, ...] = ()
    topk: int = 5

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_range("max_batch", self.max_batch, 1, 4096)
        check_range("max_wait_ms", self.max_wait_ms, 0.0, 10_000.0)
        check_range("max_upload_mb", self.max_upload_mb, 0.001, 1024.0)
        check_range("max_pixels", self.max_pixels, 1, 10**10)
        check_range("max_files", self.max_files, 1, 4096)
        check_range("max_request_mb", self.max_request_mb, 0.001, 4096.0)
        check_range("pixel_budget", self.pixel_budget, self.max_pixels, 10**12)  # one largest image must fit
        check_range("busy_wait_s", self.busy_wait_s, 0.0, 3600.0)
        check_range("topk", self.topk, 1, 1_000_000)
        if not self.allowed_hosts:
            raise ConfigError("`allowed_hosts` needs at least one name ('*' for any). Received: allowed_hosts=()")
        for origin in self.allow_origins:
            if origin != "*" and not normal_origin(origin).startswith(("http://", "https://")):
                raise ConfigError(
                    f"`allow_origins` entries must look like https://app.example[:port]. Received: {origin!r}"
                )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def body_limit(self, path: str) -> int | None:
        """Bytes a request body may hold: one upload (as base64, 4/3 larger, plus form overhead), or max_request_mb.

        The batch limit is its own setting: max_files uploads of max_upload_mb would be 429 MB, all
        read and parsed before any one image's limit is checked.
        """
        one = self.max_upload_bytes * 4 // 3 + 64 * 1024
        batch = int(self.max_request_mb * 1_000_000)
        return {"/predict": one, "/predict/batch": batch}.get(path.rstrip("/"))


class Ranked(BaseModel):
    label: str
    probability: float


class PredictionOut(BaseModel):
    """One image's answer: the same object as one item of `visiontune predict --format json`."""

    path: str | None
    predictions: list[Ranked]
    unknown: bool
    error: str | None
    prediction_set: list[str] | None = None  # conformal set (None: the bundle has no conformal data)
    unknown_score: dict[str, Any] | None = None  # {"name", "value", "threshold"}


class ErrorOut(BaseModel):
    """Every 4xx: what went wrong and, where it helps, what to send instead."""

    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A Host name the server was not started for"},
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    403: {"model": ErrorOut, "description": "A post from another site's page (see --allow-origin)"},
    413: {"model": ErrorOut, "description": "Request body, upload or image too large"},
    422: {"model": ErrorOut, "description": "Not a readable image, or a malformed request"},
    500: {"model": ErrorOut, "description": "The model gave no valid answer for this image (see GET /health)"},
    503: {"model": ErrorOut, "description": "The pixel budget stayed full: retry after Retry-After seconds"},
}


class Service:
    """The loaded predictor, its batcher, and the upload -> pixels path the routes share."""

    def __init__(self, predictor: Predictor, config: ServeConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.pixels = pixel_transform(predictor.preprocessing)
        height, width = predictor.preprocessing.image_size
        self.draft = (2 * width, 2 * height)
        self.batcher: DynamicBatcher[tuple[torch.Tensor, int], Prediction] = DynamicBatcher(
            self._forward, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms
        )
        self.budget = PixelBudget(config.pixel_budget, wait_s=config.busy_wait_s)
        self.failure: str | None = None  # why the start-up prediction failed; /health reports it

    async def self_check(self) -> None:
        """One tiny prediction (a grey image), before the batcher starts: /health says ok only when it worked."""
        height, width = self.predictor.preprocessing.image_size
        grey = torch.full((height, width, 3), 128, dtype=torch.uint8)
        try:
            prediction = (await run_in_threadpool(self._forward, [(grey, 1)]))[0]
        except Exception as exc:  # a model that can't predict at all: /health says why, the server stays up
            prediction = Prediction(None, [], error=f"{type(exc).__name__}: {str(exc)[:300]}")
        self.failure = prediction.error
        if self.failure:
            log.error("the model fails a test prediction: %s", self.failure)

    def _forward(self, items: list[tuple[torch.Tensor, int]]) -> list[Prediction]:
        """One pass for the batch (runs in the batcher's thread); each item keeps its own top-k."""
        topk = max(k for _, k in items)
        predictions = self.predictor.predict_pixels(torch.stack([pixels for pixels, _ in items]), topk=topk)
        return [replace(p, predictions=p.predictions[:k]) for p, (_, k) in zip(predictions, items, strict=True)]

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        """(H, W, 3) uint8 pixels at model size, or ImageError; CPU work, run in a worker thread."""
        image = decode_upload(
            data, name=name, max_bytes=self.config.max_upload_bytes, max_pixels=self.config.max_pixels, draft=self.draft
        )
        return self.pixels(image)

    async def decoded(self, data: bytes, name: str) -> torch.Tensor:
        """`decode` in a worker thread once the image's pixels fit in the budget (ServerBusyError if they don't)."""
        limits = {"max_bytes": self.config.max_upload_bytes, "max_pixels": self.config.max_pixels}
        pixels = await run_in_threadpool(pixels_to_decode, data, name=name, draft=self.draft, **limits)
        try:
            async with self.budget.hold(pixels):  # given back once the full-size image is gone
                return await run_in_threadpool(self.decode, data, name)
        finally:
            if pixels >= TRIM_PIXELS:
                await run_in_threadpool(return_freed_memory)

    async def predict_one(self, name: str, data: bytes, topk: int) -> Prediction:
        pixels = await self.decoded(data, name)
        prediction = await self.batcher.submit((pixels, topk))
        if prediction.error:  # the image was read, the model failed on it (a NaN output): not the client's doing
            raise ModelError(f"{name}: {prediction.error}")
        return replace(prediction, path=name)

    async def predict_many(self, uploads: list[tuple[str, bytes]], topk: int) -> list[Prediction]:
        """Every upload answered; one that can't be read gets `error`, as `predict` does for a bad file."""
        decoded = await asyncio.gather(*(self._decoded_or_error(data, name) for name, data in uploads))
        good = [(pixels, topk) for pixels in decoded if isinstance(pixels, torch.Tensor)]
        answers = iter(await self.batcher.submit_many(good))
        return [
            Prediction(name, [], error=item.reason)
            if isinstance(item, ImageError)
            else replace(next(answers), path=name)
            for (name, _), item in zip(uploads, decoded, strict=True)
        ]

    async def _decoded_or_error(self, data: bytes, name: str) -> torch.Tensor | ImageError:
        try:
            return await self.decoded(data, name)
        except ImageError as exc:
            return exc

    @property
    def backend(self) -> str:
        """What runs the model: a .onnx MODEL is onnxruntime whatever --backend said."""
        return "onnx" if isinstance(self.predictor.model, OnnxModel) else "torch"

    def info(self) -> dict[str, Any]:
        predictor, meta = self.predictor, self.predictor.meta
        calibration = predictor.calibration
        score = predictor.resolve_score()
        threshold = calibration.threshold(score)
        return json_safe(
            {
                "model": predictor.name,
                "backend": self.backend,
                "architecture": meta.architecture if meta else predictor.name,
                "method": meta.training.get("method") if meta else "pretrained",  # None: an .onnx file
                "classes": predictor.classes,
                "num_classes": predictor.num_classes,
                "image_size": list(predictor.preprocessing.image_size),
                "preprocessing": predictor.preprocessing.to_dict(),
                "metrics": meta.metrics if meta else {},
                "calibration": {"temperature": calibration.temperature, "unknown_score": score, "threshold": threshold},
                "conformal": None
                if calibration.conformal is None
                else {
                    "coverage": calibration.conformal.coverage,
                    "method": calibration.conformal.method,
                    "mondrian": calibration.conformal.mondrian,
                },
                "topk": self.config.topk,
                "limits": {
                    "max_upload_mb": self.config.max_upload_mb,
                    "max_pixels": self.config.max_pixels,
                    "max_files": self.config.max_files,
                    "max_request_mb": self.config.max_request_mb,
                    "pixel_budget": self.config.pixel_budget,
                },
                "api_key_required": self.config.api_key is not None,
                "version": __version__,
            }
        )


def create_app(config: ServeConfig, *, predictor: Predictor | None = None) -> FastAPI:
    """The FastAPI app; `predictor` (already loaded, e.g. by the CLI) or `config.model` loaded at start-up.

    Example:
        >>> app = create_app(ServeConfig(model="runs/demo"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor or Predictor.load(config.model, device=config.device, backend=config.backend)
        service = Service(loaded, config)
        await service.self_check()
        await service.batcher.start()
        app.state.service = service
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="visiontune",
        version=__version__,
        summary="Image classification with a visiontune model.",
        lifespan=lifespan,
        docs_url=None,  # replaced below by a page that loads Swagger UI from this server, not a CDN
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit_for=config.body_limit)
    app.add_middleware(HostGuard, hosts=config.allowed_hosts, origins=config.allow_origins)  # outermost: runs first
    _add_error_handlers(app)
    _add_pages(app)
    _add_routes(app)
    return app


def get_service(request: Request) -> Service:
    return request.app.state.service


_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key given to `visiontune serve`.")


def require_key(
    request: Request,
    service: Annotated[Service, Depends(get_service)],
    key: Annotated[str | None, Security(_key_header)],
) -> None:
    """401 unless the request carries the API key (X-API-Key, or Authorization: Bearer); no-op without one."""
    expected = service.config.api_key
    if expected is None:
        return
    bearer = request.headers.get("authorization", "")
    given = key or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        message = "missing or wrong API key: send it in the X-API-Key header"
        raise HTTPException(401, message, {"WWW-Authenticate": "Bearer"})


TopK = Annotated[int | None, Query(ge=1, le=1000, description="Classes per image, best first (default: the server's).")]


def _add_routes(app: FastAPI) -> None:
    protected = [Depends(require_key)]

    @app.get("/health", summary="Liveness and batching statistics")
    async def health(service: Annotated[Service, Depends(get_service)]) -> Any:
        batcher = service.batcher
        batching = {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000, **batcher.stats.to_dict()}
        status = {"model": service.predictor.name, "backend": service.backend, "batching": batching}
        if service.failure:  # the start-up prediction failed: not ok, whatever else works
            return JSONResponse({"status": "failing", "error": service.failure, **status}, status_code=503)
        return {"status": "ok", **status}

    @app.get("/info", summary="Classes, architecture, metrics, image size and limits")
    async def info(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
        return service.info()

    @app.post(
        "/predict",
        summary="Classify one image",
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=_upload_schema(many=False),
    )
    async def predict(
        request: Request, service: Annotated[Service, Depends(get_service)], topk: TopK = None
    ) -> PredictionOut:
        name, data = (await _read_uploads(request, service.config, many=False))[0]
        prediction = await service.predict_one(name, data, _topk(topk, service))
        return PredictionOut.model_validate(prediction.to_dict())

    @app.post(
        "/predict/batch",
        summary="Classify several images (one error per unreadable image)",
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=_upload_schema(many=True),
    )
    async def predict_batch(
        request: Request, service: Annotated[Service, Depends(get_service)], topk: TopK = None
    ) -> list[PredictionOut]:
        uploads = await _read_uploads(request, service.config, many=True)
        predictions = await service.predict_many(uploads, _topk(topk, service))
        return [PredictionOut.model_validate(p.to_dict()) for p in predictions]


def _topk(requested: int | None, service: Service) -> int:
    return min(requested or service.config.topk, service.predictor.num_classes)


async def _read_uploads(request: Request, config: ServeConfig, *, many: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) per image from a multipart form, a JSON body or the raw body; ImageError when there is none."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _from_form(request, config, many=many)
    if kind == "application/x-www-form-urlencoded":  # an HTML form without enctype: text fields only
        raise ImageError("<request>", f"a form of text fields, with no file in it; {UPLOAD_HELP} (multipart/form-data)")
    body = await request.body()
    if not body:
        raise ImageError("<request>", f"empty request: {UPLOAD_HELP}")
    if kind == "application/json":  # parsing and base64 of up to max_request_mb: off the event loop
        return await run_in_threadpool(_from_json, body, config, many=many)
    return [("<body>", body)]  # raw bytes, whatever the content type claims: sniffed when decoded


async def _from_form(request: Request, config: ServeConfig, *, many: bool) -> list[tuple[str, bytes]]:
    form = await request.form(max_files=config.max_files if many else 1, max_fields=16)
    names = ("files", "file") if many else ("file",)
    parts = [part for name in names for part in form.getlist(name)]
    if not parts:
        sent = ", ".join(sorted(set(form.keys()))) or "none"
        field = "'files'" if many else "'file'"
        raise ImageError("<request>", f"no image in multipart field {field} (fields sent: {sent}); {UPLOAD_HELP}")
    uploads = []
    for index, part in enumerate(parts):
        if isinstance(part, str):
            raise ImageError("<request>", f"multipart field {names[0]!r} holds text, not a file; attach the image file")
        uploads.append((part.filename or f"<file {index}>", await part.read()))
    return uploads


def _from_json(body: bytes, config: ServeConfig, *, many: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) per base64 image of a JSON body; ImageError for anything else (CPU work: a worker thread)."""
    try:
        payload = json.loads(body)
    except RecursionError as exc:  # [[[[... thousands deep: the parser recurses once per level
        raise ImageError("<request>", f"the JSON is nested too deeply to be a request; {UPLOAD_HELP}") from exc
    except ValueError as exc:  # invalid JSON, bad UTF-8, or an integer of more than 4,300 digits
        raise ImageError("<request>", f"the body is not valid JSON ({str(exc)[:200]}); {UPLOAD_HELP}") from exc
    key = "images" if many else "image"
    if not isinstance(payload, dict) or key not in payload:
        found = _keys(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ImageError("<request>", f'JSON needs the key "{key}" (got: {found or "nothing"}); {UPLOAD_HELP}')
    values = payload[key] if many else [payload[key]]
    if not isinstance(values, list) or not values or len(values) > config.max_files:
        raise ImageError("<request>", f'"{key}" must be a list of 1 to {config.max_files} base64 strings')
    return [(f"{key}[{i}]" if many else "image", decode_base64(v, name=key)) for i, v in enumerate(values)]


def _keys(payload: dict[str, Any]) -> str:
    """The first few keys of a JSON object, each cut short: the error echoes what was sent, not all of it."""
    shown = [key if len(key) <= 40 else key[:40] + "..." for key in sorted(payload)[:5]]
    return ", ".join(shown) + (f" and {len(payload) - 5} more" if len(payload) > 5 else "")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": message} with a 4xx a client can act on (503: retry); the server carries on."""

    @app.exception_handler(VisiontuneError)
    async def visiontune_error(request: Request, exc: VisiontuneError) -> JSONResponse:
        if isinstance(exc, ServerBusyError):
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        if isinstance(exc, ModelError):  # the server's model failed, not the request: 500, still one JSON line
            return JSONResponse({"error": str(exc)}, status_code=500)
        status = 413 if isinstance(exc, ImageTooLargeError) else 422
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        """A bug in visiontune: still JSON for the client (uvicorn logs the traceback as the error passes on)."""
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"}, 500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _add_pages(app: FastAPI) -> None:
    """The web page and the offline API docs, both from files inside the package."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(), headers={"Content-Security-Policy": PAGE_POLICY})

    try:
        import fastapi_offline  # ships Swagger UI's files; only they are used
    except ImportError:
        log.info("fastapi-offline is not installed: /docs is off (the schema is at /openapi.json)")
        return
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="visiontune API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )


def _upload_schema(*, many: bool) -> dict[str, Any]:
    """The request bodies the route parses itself, for the OpenAPI docs."""
    binary = {"type": "string", "format": "binary"}
    if many:
        form = {"files": {"type": "array", "items": binary}}
        body = {"images": {"type": "array", "items": {"type": "string", "format": "base64"}}}
    else:
        form = {"file": binary}
        body = {"image": {"type": "string", "format": "base64", "description": "the file's bytes, base64"}}
    required = list(form)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": required}},
                "application/json": {"schema": {"type": "object", "properties": body, "required": list(body)}},
            },
        }
    }
