"""The ``sse-adapter`` command: parses flags and env into Settings, nothing more."""

from __future__ import annotations

import enum
import re
import sys
import types
import typing
from typing import Annotated, Any

import typer
import typer.core

from sse_adapter import __version__
from sse_adapter.settings import (
    HeartbeatMode,
    LogFormat,
    MessagesHeartbeat,
    ReasoningField,
    ResponsesHeartbeat,
    Settings,
    SettingsError,
    StreamUsage,
    Tags,
    ToolCallMode,
)

__all__ = ["app", "main", "serve_kinds"]

# Typer's usage errors derive from click's ClickException, which newer typer
# releases vendor: find it through a public class rather than a private path.
_CLICK_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)
# A usage error of ours, printed as it is: BadParameter would prefix "Invalid value for
# '--config' (env var: 'SSE_ADAPTER_CONFIG')", naming a place the value did not come from.
_USAGE_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)


def _no_flag_metavar(params: list[Any]) -> list[Any]:
    """typer's help shows "<bool>" after a flag, which takes no value: not here.
    (Duck-typed: newer typer releases vendor click, so its classes are not click's.)"""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavar(super().get_params(ctx))


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavar(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Re-emits any model server's stream as SSE that One-API relays intact.",
)


class Switch(enum.StrEnum):
    ON = "on"
    OFF = "off"


def _option(env: str, help: str, panel: str = "Server") -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(
        envvar=f"SSE_ADAPTER_{env}", help=help, rich_help_panel=panel
    )
    return option


_REPAIRS = "Chunk repairs (the defaults are what One-API and OpenAI clients need)"
_LIMITS = "Timeouts and limits"
_REQUESTS = "Requests and billing"
_MODELS = "sse_adapter.proxy.models"  # where the config file's model aliases wait for serve
_FILE = "sse_adapter.config"  # the config file's path and its keys as written, for messages
_COMMA_LISTS = frozenset({"drop_fields"})


def _config(ctx: typer.Context, path: str | None) -> str | None:
    """Read --config before any other option: its values are the defaults that env
    variables and flags override. One layering for every option, click's own: a flag,
    else its env variable, else the file (``default_map``), else the default."""
    if path is None:
        return None
    from sse_adapter.config import read_config

    try:
        found = read_config(path, serve_kinds())
    except SettingsError as exc:
        raise _USAGE_ERROR(str(exc)) from None
    ctx.default_map = {**(ctx.default_map or {}), **found.values}
    ctx.meta[_MODELS] = found.models
    ctx.meta[_FILE] = (path, found.keys)
    return path


def serve_kinds() -> dict[str, Any]:
    """What each of serve's options takes, from its signature: the config file's values are
    checked against it."""
    from sse_adapter.config import Kind

    kinds = {}
    for name, hint in typing.get_type_hints(serve).items():
        if name in ("ctx", "config", "return"):
            continue
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        kind = list if typing.get_origin(hint) is list else hint
        kinds[name] = Kind(kind, comma_list=name in _COMMA_LISTS)
    return kinds


def _sourced(ctx: typer.Context, message: str) -> str:
    """A Settings error about a value that came from the config file or the environment,
    saying so: a message that names the flag alone sends the user to the wrong place."""
    flag = re.match(r"--([a-z-]+)", message)
    name = flag[1].replace("-", "_") if flag else ""
    source = getattr(ctx.get_parameter_source(name), "name", None) if name in ctx.params else None
    if source == "DEFAULT_MAP" and _FILE in ctx.meta:
        path, keys = ctx.meta[_FILE]
        return f"--config {path!r}: {keys.get(name, name)}: {message}"
    if source == "ENVIRONMENT":
        return f"SSE_ADAPTER_{name.upper()}: {message}"
    return message


def _version(shown: bool) -> None:
    if shown:
        print(f"sse-adapter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Re-emits any model server's stream as SSE that One-API relays intact."""


@app.command(cls=_Command)
def serve(
    ctx: typer.Context,
    upstream: Annotated[
        str, _option("UPSTREAM", "Base URL of the model server (TGI, vLLM, llama.cpp, Ollama, ...).")
    ],
    host: Annotated[str, _option("HOST", "Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, _option("PORT", "Port to listen on.")] = 8000,
    log_format: Annotated[
        LogFormat, _option("LOG_FORMAT", "text for people, json for log pipelines.", "Logs")
    ] = LogFormat.TEXT,
    log_level: Annotated[
        str, _option("LOG_LEVEL", "debug, info, warning, error or critical.", "Logs")
    ] = "info",
    trace_dir: Annotated[
        str | None,
        _option(
            "TRACE_DIR", "Write each request's raw upstream and client bytes here (keys redacted).", "Logs"
        ),
    ] = None,
    trace_bodies: Annotated[
        bool,
        typer.Option(
            "--trace-bodies",
            envvar="SSE_ADAPTER_TRACE_BODIES",
            help="Keep request bodies (prompts) in traces.",
            rich_help_panel="Logs",
        ),
    ] = False,
    access_log_probes: Annotated[
        Switch,
        _option(
            "ACCESS_LOG_PROBES",
            "on: access lines for /healthz, /readyz and /metrics too; /metrics counts them either way.",
            "Logs",
        ),
    ] = Switch.OFF,
    workers: Annotated[
        int, _option("WORKERS", "Worker processes; one per core past a few thousand events a second.")
    ] = 1,
    heartbeat_interval: Annotated[
        float,
        _option("HEARTBEAT_INTERVAL", "Send a heartbeat after this many idle seconds (fractions allowed)."),
    ] = 10.0,
    heartbeat_mode: Annotated[
        HeartbeatMode,
        _option(
            "HEARTBEAT_MODE",
            "chunk: an empty data chunk that reaches the end client through One-API; "
            "comment: ': keep-alive', which keeps only the hop to the gateway alive; off: none.",
        ),
    ] = HeartbeatMode.CHUNK,
    responses_heartbeat: Annotated[
        ResponsesHeartbeat,
        _option(
            "RESPONSES_HEARTBEAT",
            "On /v1/responses: keepalive: a typed keepalive event (Codex's idle timer counts only "
            "typed events); comment: ': keep-alive' only; off: none.",
        ),
    ] = ResponsesHeartbeat.KEEPALIVE,
    messages_heartbeat: Annotated[
        MessagesHeartbeat,
        _option(
            "MESSAGES_HEARTBEAT",
            "On /v1/messages: ping: Anthropic's event: ping (new-api relays it, not comments); "
            "comment: ': keep-alive' only; off: none.",
        ),
    ] = MessagesHeartbeat.PING,
    status_hold: Annotated[
        float | None,
        _option(
            "STATUS_HOLD",
            "Seconds the status waits for the upstream's answer before the 200 goes out "
            "(One-API retries another channel only before it). Default: --heartbeat-interval.",
        ),
    ] = None,
    connect_timeout: Annotated[
        float, _option("CONNECT_TIMEOUT", "Seconds to wait for a connection to the upstream.", _LIMITS)
    ] = 10.0,
    first_byte_timeout: Annotated[
        float,
        _option(
            "FIRST_BYTE_TIMEOUT",
            "Longest wait for the upstream's first event (heartbeats run meanwhile).",
            _LIMITS,
        ),
    ] = 600.0,
    idle_timeout: Annotated[
        float, _option("IDLE_TIMEOUT", "Longest upstream silence once it streams.", _LIMITS)
    ] = 300.0,
    total_timeout: Annotated[
        float, _option("TOTAL_TIMEOUT", "Longest whole exchange with the upstream; 0: no limit.", _LIMITS)
    ] = 0.0,
    max_request_bytes: Annotated[
        int, _option("MAX_REQUEST_BYTES", "Largest request body; past it, 413.", _LIMITS)
    ] = 20 * 1024 * 1024,
    max_header_count: Annotated[
        int, _option("MAX_HEADER_COUNT", "Most request headers; past it, 431.", _LIMITS)
    ] = 100,
    max_header_bytes: Annotated[
        int, _option("MAX_HEADER_BYTES", "Most bytes of request headers; past it, 431.", _LIMITS)
    ] = 64 * 1024,
    request_read_timeout: Annotated[
        float,
        _option(
            "REQUEST_READ_TIMEOUT",
            "Longest wait for a request's head, then for its body; past it, 408.",
            _LIMITS,
        ),
    ] = 30.0,
    max_connections: Annotated[
        int, _option("MAX_CONNECTIONS", "Most open client connections; past it, 503 at once.", _LIMITS)
    ] = 10_000,
    max_event_bytes: Annotated[
        int,
        _option(
            "MAX_EVENT_BYTES", "Largest upstream event; a larger one ends the stream in an error.", _LIMITS
        ),
    ] = 16 * 1024 * 1024,
    max_concurrent_streams: Annotated[
        int,
        _option(
            "MAX_CONCURRENT_STREAMS", "Most streams at once; past it, 429 with Retry-After. 0: none.", _LIMITS
        ),
    ] = 0,
    shutdown_grace: Annotated[
        float,
        _option(
            "SHUTDOWN_GRACE",
            "On SIGTERM, seconds streams get to finish before they end in an error.",
            _LIMITS,
        ),
    ] = 30.0,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            envvar="SSE_ADAPTER_API_KEY",
            help="A key clients must send as 'Authorization: Bearer <key>'; repeatable, or a "
            "comma-separated list. Env SSE_ADAPTER_API_KEY takes a comma-separated list.",
            rich_help_panel="Auth",
            show_default=False,
        ),
    ] = None,
    upstream_api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SSE_ADAPTER_UPSTREAM_API_KEY",
            help="The key sent to the model server as 'Authorization: Bearer <key>'.",
            rich_help_panel="Auth",
            show_default=False,
        ),
    ] = None,
    max_line_bytes: Annotated[
        int,
        _option(
            "MAX_LINE_BYTES",
            "Longest line written; longer text is split over chunks (One-API: 64 KiB).",
            _REPAIRS,
        ),
    ] = 65000,
    map_finish_reason: Annotated[
        Switch,
        _option(
            "MAP_FINISH_REASON", "Map stop_sequence, eos_token, '' and unknown values to 'stop'.", _REPAIRS
        ),
    ] = Switch.ON,
    fill_fields: Annotated[
        Switch, _option("FILL_FIELDS", "Fill missing object, created and finish_reason.", _REPAIRS)
    ] = Switch.ON,
    reasoning_field: Annotated[
        ReasoningField,
        _option(
            "REASONING_FIELD",
            "The one delta field reasoning text goes under; both: under reasoning_content and "
            "reasoning alike; keep: as the server sent it; think-tags: into content, inside <think>.",
            _REPAIRS,
        ),
    ] = ReasoningField.REASONING_CONTENT,
    think_tags: Annotated[
        Tags,
        _option(
            "THINK_TAGS",
            "split: move <think>...</think> out of content into reasoning; a </think> that comes first "
            "closes a thought the prompt opened (see the README).",
            _REPAIRS,
        ),
    ] = Tags.KEEP,
    tool_calls: Annotated[
        ToolCallMode,
        _option(
            "TOOL_CALLS",
            "normalise: streamed tool calls in OpenAI's shape (index, id once, string arguments).",
            _REPAIRS,
        ),
    ] = ToolCallMode.NORMALISE,
    tool_call_tags: Annotated[
        Tags,
        _option(
            "TOOL_CALL_TAGS", "split: turn <tool_call>{...}</tool_call> in content into tool calls.", _REPAIRS
        ),
    ] = Tags.KEEP,
    final_usage_only: Annotated[
        Switch,
        _option(
            "FINAL_USAGE_ONLY",
            "Drop null and zero usage; send the last real usage as the last chunk.",
            _REPAIRS,
        ),
    ] = Switch.ON,
    stream_usage: Annotated[
        StreamUsage,
        _option(
            "STREAM_USAGE",
            "ask: ask the upstream for usage on every stream (stream_options.include_usage), "
            "count it with the upstream's tokenizer when it sends none; ask-keep-client: the same, "
            "but a client that sent include_usage false gets no usage; pass: as the client asked.",
            _REQUESTS,
        ),
    ] = StreamUsage.ASK,
    drop_fields: Annotated[
        str,
        _option("DROP_FIELDS", "Request fields never sent upstream, comma-separated.", _REQUESTS),
    ] = "",
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            envvar="SSE_ADAPTER_CONFIG",
            is_eager=True,
            callback=_config,
            # rich reads [...] as markup: the backslash keeps the table's name on screen
            help='A TOML file with a value for any flag and \\[models."alias"] sections; '
            "flags and env override it.",
            rich_help_panel=_REQUESTS,
            show_default=False,
        ),
    ] = None,
    nonstream_keepalive: Annotated[
        Switch,
        _option(
            "NONSTREAM_KEEPALIVE",
            "After one silent interval, send 200, then a space each interval until the body is ready.",
            "Non-streaming requests",
        ),
    ] = Switch.OFF,
    nonstream_via_stream: Annotated[
        Switch,
        _option(
            "NONSTREAM_VIA_STREAM",
            "Ask the upstream for a stream and assemble the answer from it.",
            "Non-streaming requests",
        ),
    ] = Switch.OFF,
    drop_non_chunks: Annotated[
        Switch,
        _option(
            "DROP_NON_CHUNKS",
            "Drop events with no choices and no usage (MCP events, prompt_progress).",
            _REPAIRS,
        ),
    ] = Switch.ON,
) -> None:
    """Serve the adapter in front of a model server."""
    from sse_adapter.server import run_server  # the web stack loads only for serving

    try:
        if port == 0:  # Settings take 0 (any free port) for the demo and the tests; a service needs one
            raise SettingsError("--port must be between 1 and 65535, got 0")
        settings = Settings(
            upstream=upstream,
            host=host,
            port=port,
            workers=workers,
            log_format=log_format,
            log_level=log_level,
            trace_dir=trace_dir,
            trace_bodies=trace_bodies,
            access_log_probes=access_log_probes is Switch.ON,
            heartbeat_interval=heartbeat_interval,
            heartbeat_mode=heartbeat_mode,
            responses_heartbeat=responses_heartbeat,
            messages_heartbeat=messages_heartbeat,
            status_hold=status_hold,
            connect_timeout=connect_timeout,
            first_byte_timeout=first_byte_timeout,
            idle_timeout=idle_timeout,
            total_timeout=total_timeout,
            max_request_bytes=max_request_bytes,
            max_header_count=max_header_count,
            max_header_bytes=max_header_bytes,
            request_read_timeout=request_read_timeout,
            max_connections=max_connections,
            max_event_bytes=max_event_bytes,
            max_concurrent_streams=max_concurrent_streams,
            shutdown_grace=shutdown_grace,
            api_keys=_api_keys(api_key),
            upstream_api_key=upstream_api_key,
            max_line_bytes=max_line_bytes,
            map_finish_reason=map_finish_reason is Switch.ON,
            fill_fields=fill_fields is Switch.ON,
            reasoning_field=reasoning_field,
            think_tags=think_tags,
            tool_calls=tool_calls,
            tool_call_tags=tool_call_tags,
            final_usage_only=final_usage_only is Switch.ON,
            drop_non_chunks=drop_non_chunks is Switch.ON,
            nonstream_keepalive=nonstream_keepalive is Switch.ON,
            nonstream_via_stream=nonstream_via_stream is Switch.ON,
            stream_usage=stream_usage,
            drop_fields=_comma_list(drop_fields),
            models=ctx.meta.get(_MODELS, ()),
        )
        run_server(settings)
    except SettingsError as exc:
        raise _USAGE_ERROR(_sourced(ctx, str(exc))) from None


@app.command(cls=_Command)
def demo(
    dialect: Annotated[
        str,
        typer.Option(
            help="A dialect to show (chat: tgi-2.0, xinference, llamacpp-legacy, vllm, tools, reasoning; "
            "responses-* and messages-*: clean, thinking or silent, cut, error), or all."
        ),
    ] = "all",
    form: Annotated[
        str,
        typer.Option(
            "--format",
            help="The route to show: chat (/v1/chat/completions), responses (/v1/responses), "
            "messages (/v1/messages), or all.",
        ),
    ] = "all",
    think_seconds: Annotated[
        float, typer.Option(help="How long the thinking models stay silent before they go on.")
    ] = 20.0,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep both servers running afterwards, and print curl commands.")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(
            help="The adapter's port; the demo model server takes the next one. "
            "Default: free ports, or 8000 with --serve."
        ),
    ] = None,
) -> None:
    """Show what sse-adapter does, with a built-in fake model server: no GPU, no TGI needed."""
    import asyncio
    import contextlib
    import logging

    from rich.console import Console

    from sse_adapter.tools.agentclient import FORMATS
    from sse_adapter.tools.demo import dialects_for, run_demo
    from sse_adapter.tools.demo_upstream import DIALECTS

    if dialect != "all" and dialect not in DIALECTS:
        raise typer.BadParameter(f"--dialect must be one of {', '.join(DIALECTS)} or all, got {dialect!r}")
    if form != "all" and form not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)} or all, got {form!r}")
    if dialect != "all" and form != "all" and DIALECTS[dialect].form is not FORMATS[form]:
        raise typer.BadParameter(f"--dialect {dialect} is not of --format {form}")
    if think_seconds < 0:
        raise typer.BadParameter(f"--think-seconds must be 0 or more, got {think_seconds}")
    if port is not None and not 1 <= port <= 65534:
        raise typer.BadParameter(f"--port must be between 1 and 65534, got {port}")
    logging.getLogger("sse_adapter").setLevel(logging.ERROR)  # the tables report the upstreams' errors
    with contextlib.suppress(KeyboardInterrupt):  # --serve ends with Ctrl-C
        try:
            asyncio.run(run_demo(dialects_for(dialect, form), think_seconds, serve, port, Console()))
        except SettingsError as exc:
            raise typer.BadParameter(str(exc)) from None


@app.command(cls=_Command)
def probe(
    upstream: Annotated[
        str, typer.Option(help="The model server's base URL, probed directly.", show_default=False)
    ],
    model: Annotated[
        str | None, typer.Option(help="The model to ask for; default: the first the server lists.")
    ] = None,
    via: Annotated[
        str | None,
        typer.Option(
            help="Also probe through this base URL: the adapter, or One-API / new-api.", show_default=False
        ),
    ] = None,
    form: Annotated[
        str,
        typer.Option(
            "--format",
            help="The route to probe: chat (/v1/chat/completions, as One-API relays it), responses "
            "(/v1/responses) or messages (/v1/messages), as new-api relays them; or all.",
        ),
    ] = "chat",
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Sent as 'Authorization: Bearer <key>', on /v1/messages as 'x-api-key' too (to --via too).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Test a model server's streams as One-API or new-api would relay them; exit 0 if they relay cleanly."""
    import asyncio
    import json

    from rich.console import Console

    from sse_adapter.tools.agentclient import FORMATS
    from sse_adapter.tools.probe import probe_routes

    for flag, url in (("--upstream", upstream), ("--via", via)):
        if url is not None:
            try:
                Settings(upstream=url)
            except SettingsError as exc:
                raise typer.BadParameter(str(exc).replace("--upstream", flag)) from None
    if form != "all" and form not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)} or all, got {form!r}")
    forms = list(FORMATS.values()) if form == "all" else [FORMATS[form]]
    console = Console(stderr=as_json)
    routes = ", ".join(name for name, known in FORMATS.items() if known in forms)
    with console.status(
        f"Probing {routes}: a non-stream and a stream request, then the same through --via..."
    ):
        run = asyncio.run(probe_routes(upstream, via, model, api_key, forms))
    if as_json:
        print(json.dumps(run.as_json(), indent=2, sort_keys=True))
    else:
        run.show(console)
    raise typer.Exit(0 if run.relays else 1)


def _comma_list(value: str | list[str]) -> tuple[str, ...]:
    """A comma list from a flag or env, or a list from the config file."""
    listed = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in listed if item.strip())


def _api_keys(given: list[str] | None) -> tuple[str, ...]:
    """The keys from --api-key flags, SSE_ADAPTER_API_KEY or the file, whichever layer won;
    a comma separates keys in each value (click splits the env variable at spaces)."""
    return tuple(key.strip() for value in given or () for key in value.split(",") if key.strip())


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
