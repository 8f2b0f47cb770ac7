"""One-API's streaming relay rules, as a pure function of the bytes it reads.

This is a model of ``StreamHandler`` in songquanpeng/one-api
(relay/adaptor/openai/main.go, v0.6.11), written from shared/oneapi-relay.md:
what it forwards is what the end client behind One-API gets. The tests use it
as One-API's double, and ``probe`` and ``demo`` give their verdicts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

__all__ = ["LINE_LIMIT", "OneAPIRelay", "accepts_stream", "channel_test_passes", "nonstream_error"]

# bufio.Scanner's default maximum token size: a line of this many bytes (its
# LF not counted) no longer fits the buffer, and the scan stops there.
LINE_LIMIT = 64 * 1024 - 1

_PREFIX = b"data: "
_DONE = b"[DONE]"


def accepts_stream(status: int, content_type: str) -> bool:
    """Whether One-API treats a streaming response as a stream, not an error."""
    return status in (200, 201) and not content_type.lower().startswith("application/json")


def nonstream_error(status: int, body: bytes) -> str | None:
    """What One-API's non-stream Handler makes of a whole answer: None when
    it relays it, else why it reports an error. Like Go's json.Unmarshal,
    it accepts whitespace around the JSON."""
    if status != 200:
        return f"status {status}"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "unmarshal_response_body_failed"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and error.get("type"):
        return str(error.get("message") or error["type"])
    return None


def channel_test_passes(status: int, body: bytes) -> bool:
    """One-API's channel "test" button (controller/channel-test.go): 200, non-empty
    choices and a string message content. A missing usage it fills by counting."""
    if nonstream_error(status, body) is not None:
        return False
    parsed = orjson.loads(body)
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices:
        return False
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    return isinstance(message, dict) and isinstance(message.get("content"), str)


@dataclass
class OneAPIRelay:
    """Feed it the upstream's bytes as they come; it returns what One-API sends on.

    ``chat`` picks the rules of ``/v1/chat/completions`` (chunks with no
    choices and no usage are dropped) over those of ``/v1/completions``.
    """

    chat: bool = True
    done_rendered: bool = False
    overflowed: bool = False  # the scanner hit a line over LINE_LIMIT and stopped
    dropped: list[bytes] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        if self.overflowed:
            return []
        self._buffer += data
        rendered: list[bytes] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            if end > LINE_LIMIT:
                return self._overflow(rendered)
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(line.removesuffix(b"\r"), rendered)
        if len(self._buffer) > LINE_LIMIT:
            return self._overflow(rendered)
        return rendered

    def close(self) -> list[bytes]:
        """End of the upstream body: the last unterminated line, then One-API's own [DONE]."""
        rendered: list[bytes] = []
        if self._buffer and not self.overflowed:
            self._line(bytes(self._buffer).removesuffix(b"\r"), rendered)
            self._buffer.clear()
        if not self.done_rendered:
            rendered.append(_render(_DONE))
        return rendered

    def _overflow(self, rendered: list[bytes]) -> list[bytes]:
        self.overflowed = True
        self._buffer.clear()
        return rendered

    def _line(self, line: bytes, rendered: list[bytes]) -> None:
        head = line[: len(_PREFIX)]
        if len(line) < len(_PREFIX) or (head != _PREFIX and head != _DONE):
            self.dropped.append(line)
            return
        payload = line[len(_PREFIX) :]
        if payload.startswith(_DONE):
            self.done_rendered = True
            rendered.append(_render(line))
        elif self.chat and _drops_chunk(payload):
            self.dropped.append(line)
        else:
            rendered.append(_render(line))


def _drops_chunk(payload: bytes) -> bool:
    """A chat chunk that parses with no choices and no usage is dropped ("for azure")."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False  # passed through raw
    if not isinstance(chunk, dict):
        return False  # Go's Unmarshal fails on it: passed through raw
    choices = chunk.get("choices")
    return (choices is None or choices == []) and chunk.get("usage") is None


def _render(line: bytes) -> bytes:
    # common/render: TrimPrefix "data: ", TrimSuffix "\r", then "data: " + str + blank line
    return b"data: " + line.removeprefix(_PREFIX).removesuffix(b"\r") + b"\n\n"
