"""The ``sse-adapter`` command: parses flags and env into Settings, nothing more."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sse_adapter.settings import HeartbeatMode, Settings, SettingsError

__all__ = ["app", "main"]

# Typer's usage errors derive from click's ClickException, which newer typer
# releases vendor: find it through a public class rather than a private path.
_CLICK_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Re-emits any model server's stream as SSE that One-API relays intact.",
)


@app.callback()
def _root() -> None:
    """Re-emits any model server's stream as SSE that One-API relays intact."""


@app.command()
def serve(
    upstream: Annotated[
        str,
        typer.Option(
            envvar="SSE_ADAPTER_UPSTREAM",
            help="Base URL of the model server (TGI, vLLM, llama.cpp, Ollama, ...).",
            show_default=False,
        ),
    ],
    host: Annotated[str, typer.Option(envvar="SSE_ADAPTER_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SSE_ADAPTER_PORT", help="Port to listen on.")] = 8000,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            envvar="SSE_ADAPTER_HEARTBEAT_INTERVAL",
            help="Send a heartbeat after this many idle seconds (fractions allowed).",
        ),
    ] = 10.0,
    heartbeat_mode: Annotated[
        HeartbeatMode,
        typer.Option(
            envvar="SSE_ADAPTER_HEARTBEAT_MODE",
            help="chunk: an empty data chunk that reaches the end client through One-API; "
            "comment: ': keep-alive', which keeps only the hop to the gateway alive; off: none.",
        ),
    ] = HeartbeatMode.CHUNK,
) -> None:
    """Serve the adapter in front of a model server."""
    from sse_adapter.app import run_server  # the web stack loads only for serving

    try:
        settings = Settings(
            upstream=upstream,
            host=host,
            port=port,
            heartbeat_interval=heartbeat_interval,
            heartbeat_mode=heartbeat_mode,
        )
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_server(settings)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a bad flag or env value is one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sse-adapter", standalone_mode=False)
    except _CLICK_ERROR as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        if message:  # empty when the help was shown for a bare command
            print(f"sse-adapter: error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
