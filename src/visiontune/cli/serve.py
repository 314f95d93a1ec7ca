"""`visiontune serve MODEL`: the HTTP API and web page on loopback (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from visiontune.cli.console import console, err_console

Opt = typer.Option


def serve_command(
    model: Annotated[str, typer.Argument(help="Bundle folder, run folder, exported .onnx file or backbone name.")],
    host: Annotated[str, Opt(help="Address to listen on; the default answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="Port to listen on.")] = 8000,
    backend: Annotated[str, Opt(help="torch, or onnx: onnxruntime on the CPU (.onnx MODELs always).")] = "torch",
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N (torch backend).")] = "cpu",
    api_key: Annotated[
        str | None,
        Opt(envvar="VISIONTUNE_API_KEY", show_envvar=True, help="Require this key (X-API-Key header) to predict."),
    ] = None,
    max_batch: Annotated[int, Opt(min=1, help="Most images in one forward pass (1 turns batching off).")] = 32,
    max_wait_ms: Annotated[float, Opt(min=0, help="How long a request waits for others to share its pass.")] = 5.0,
    max_upload_mb: Annotated[float, Opt(min=0.001, help="Largest image file accepted (413 above).")] = 10.0,
    max_pixels: Annotated[int, Opt(min=1, help="Largest image accepted, width x height, read from the header.")] = (
        40_000_000
    ),
    max_request_mb: Annotated[
        float, Opt(min=0.001, help="Largest /predict/batch request, all its images together (413 above).")
    ] = 50.0,
    pixel_budget: Annotated[
        int, Opt(min=1, help="Pixels all requests may be decoding at once; above it images wait, then 503.")
    ] = 100_000_000,
    allowed_host: Annotated[
        list[str] | None,
        Opt(metavar="NAME", help="Another Host name to answer (repeatable; '*': any). Loopback and --host always are."),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        Opt(metavar="ORIGIN", help="Another site (https://app.example) whose pages may POST here (repeatable)."),
    ] = None,
    topk: Annotated[int, Opt(min=1, help="Classes per answer unless the request asks (?topk=N).")] = 5,
    access_log: Annotated[bool, Opt("--access-log", help="Log every request.")] = False,
) -> int:
    """Serve a model over HTTP: POST /predict, a web page at /, API docs at /docs."""
    from visiontune.errors import MissingPackageError

    check_port(host, port)  # before the heavy imports: a taken port is known in a fraction of a second
    try:
        import uvicorn

        from visiontune.serve import ServeConfig, create_app
        from visiontune.serve.guards import LOOPBACK_HOSTS, allowed_hosts
    except ImportError as exc:
        raise MissingPackageError(f"serving needs {exc.name}: pip install 'visiontune[serve]'") from exc
    from visiontune.predict import load

    config = ServeConfig(
        model=model,
        backend=backend,
        device=device,
        api_key=api_key or None,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_request_mb=max_request_mb,
        pixel_budget=pixel_budget,
        allowed_hosts=allowed_hosts(host, allowed_host or ()),
        allow_origins=tuple(allow_origin or ()),
        topk=topk,
    )
    predictor = load(model, device=device, backend=backend)  # errors here are one line, before the server starts
    if not _loopback(host) and config.api_key is None:
        err_console.print(
            f"[yellow]warning:[/] listening on {host} with no API key: anyone who can reach it can use the model"
        )
    if config.allowed_hosts == LOOPBACK_HOSTS and not _loopback(host):
        err_console.print(
            f"[yellow]note:[/] listening on {host}, but answering only requests addressed to"
            f" {', '.join(LOOPBACK_HOSTS)}: add --allowed-host NAME for the name other machines use (or '*' for any)"
        )
    shown = f"[{host}]" if ":" in host else host
    runtime = "onnxruntime" if type(predictor.model).__name__ == "OnnxModel" else f"torch, {predictor.device}"
    console.print(
        f"serving {predictor.name} ({predictor.num_classes} classes, {runtime}) on http://{shown}:{port}/"
        f"  (API docs at /docs{', API key required' if config.api_key else ''}; Ctrl+C stops)",
        highlight=False,
    )
    app = create_app(config, predictor=predictor)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=access_log, server_header=False)
    return 0


def check_port(host: str, port: int) -> None:
    """A taken port as one line now, not a uvicorn log line after the model has loaded."""
    import socket

    from visiontune.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = f"can't listen on {host}:{port} ({exc.strerror})"
            raise ConfigError(f"{reason}; choose another --port or --host") from exc


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
