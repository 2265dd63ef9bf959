"""Chat completions against llama-server (or any OpenAI-compatible server), streamed.

A cell's request has no overall time limit: a 1M-token prefill takes half an hour, and a
client-side read timeout would cancel it and throw the work away. Instead the request
streams with `return_progress`, so llama-server sends `prompt_progress` events during
prefill, and the only limits are the connect timeout and a *stall* timeout: httpx's read
timeout bounds each single socket read, so it fires only after `stall_timeout_s` of
silence, never because the whole cell is long.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/completion"
THINKING_MODES = ("off", "on")
STATUSES = ("ok", "context_error", "http_error", "timeout", "disconnected", "unreachable")

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ChatResult:
    """What one chat request came back with; `status` says whether it finished."""

    status: str
    """ok | context_error | http_error | timeout (stall) | disconnected | unreachable"""
    answer: str
    """The streamed `content` (the final answer, without reasoning)."""
    reasoning: str
    """The streamed `reasoning_content` of a thinking model."""
    finish_reason: str | None
    """'stop', 'length', ... from the final chunk; None when the stream did not finish."""
    prompt_n: int | None
    """timings.prompt_n: prompt tokens actually computed."""
    cache_n: int | None
    """timings.cache_n: prompt tokens reused from the server's prompt cache."""
    prompt_tokens: int | None
    """usage.prompt_tokens: the server's count of the whole prompt; timings' prompt_n + cache_n
    when the server sent no usage (llama-server sends usage only for stream_options.include_usage)."""
    prompt_ms: float | None
    predicted_n: int | None
    predicted_ms: float | None
    draft_n: int | None
    """timings.draft_n: tokens a draft (e.g. the model's MTP head) proposed; None without drafting."""
    draft_n_accepted: int | None
    """timings.draft_n_accepted: drafted tokens the model accepted."""
    http_status: int | None
    error: str | None
    """A short message for every status but ok."""
    wall_s: float


@dataclass
class _Stream:
    """What has been read from the stream so far."""

    answer: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def chat_body(
    messages: list[dict[str, Any]],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    thinking: str = "off",
    cache_prompt: bool = True,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """The JSON body of one streamed chat request with prefill progress, usage and timings
    (`ignore_eos`: decode all `max_tokens`, as a timing probe wants)."""
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {THINKING_MODES}, not {thinking!r}")
    return {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_progress": True,
        "cache_prompt": cache_prompt,
        "chat_template_kwargs": {"enable_thinking": thinking == "on"},
    } | ({"ignore_eos": True} if ignore_eos else {})


def prime_body(tokens: list[int]) -> dict[str, Any]:
    """The JSON body of a streamed primer: compute `tokens` into the cache, generate nothing."""
    return {"prompt": tokens, "n_predict": 0, "cache_prompt": True, "stream": True, "return_progress": True}


def stream_chat(
    http: httpx.Client,
    url: str,
    body: dict[str, Any],
    stall_timeout_s: float,
    on_progress: ProgressCallback | None = None,
    path: str = CHAT_PATH,
) -> ChatResult:
    """POST `body` to `url` + `path` (the chat endpoint; `/completion` for a primer) on `http`, whose
    read timeout is the stall timeout, and collect the answer, timings and usage. `on_progress`
    receives each `prompt_progress` event, a dict {total, cache, processed, time_ms}, during
    prefill. Never raises for a server's fault."""
    started = time.monotonic()
    state = _Stream()
    status, http_status, error = "ok", None, None
    if http.is_closed:
        return _result(state, "disconnected", None, f"the session with {url} was closed", 0.0)
    try:
        # a fresh connection per stream: llama-server may drop a kept-alive one after a stream, and a
        # request sent on it is lost before the server sees it
        with http.stream("POST", url + path, json=body, headers={"Connection": "close"}) as response:
            http_status = response.status_code
            if response.status_code != 200:
                response.read()
                status, error = _error_status(response.status_code, response.text)
            else:
                for event in _sse_events(response.iter_lines()):
                    _apply(event, state, on_progress)
                if state.error is not None:
                    status, error = _error_status(None, json.dumps({"error": state.error}))
                elif state.finish_reason is None:
                    status, error = "disconnected", "the stream ended before its final chunk"
    except httpx.ConnectTimeout:
        status, error = "unreachable", f"no connection to {url} within the connect timeout"
    except (httpx.ConnectError, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        status, error = "unreachable", f"cannot connect to {url}: {exc.__class__.__name__}: {exc}"
    except (httpx.ReadTimeout, httpx.WriteTimeout):
        status, error = "timeout", f"no data from the server for {stall_timeout_s:g} s (stalled)"
    except httpx.TransportError as exc:
        status, error = "disconnected", f"connection dropped: {exc.__class__.__name__}: {exc}"
    except httpx.DecodingError as exc:
        status, error = "http_error", f"the answer cannot be decoded: {exc}"[:300]
    return _result(state, status, http_status, error, time.monotonic() - started)


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Decode server-sent events into JSON objects; `[DONE]` ends the stream.

    llama-server sends `data: {...}` lines; an error inside a stream may also arrive as
    an `error: {...}` line. Lines that are not JSON objects are skipped.
    """
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            data.append(payload)
        elif line.startswith("error:"):
            parsed = _loads(line[6:].strip())
            if isinstance(parsed, dict) and "error" in parsed:
                yield parsed
            else:
                yield {"error": parsed if isinstance(parsed, dict) else {"message": line[6:].strip()}}
        elif not line.strip() and data:
            parsed = _loads("\n".join(data))
            data = []
            if isinstance(parsed, dict):
                yield parsed
    if data:
        parsed = _loads("\n".join(data))
        if isinstance(parsed, dict):
            yield parsed


def _apply(event: dict[str, Any], state: _Stream, on_progress: ProgressCallback | None) -> None:
    """Fold one stream event into `state`."""
    if "error" in event:
        error = event["error"]
        state.error = error if isinstance(error, dict) else {"message": str(error)}
        return
    progress = event.get("prompt_progress")
    if isinstance(progress, dict) and on_progress is not None:
        on_progress(progress)
    if isinstance(event.get("timings"), dict):
        state.timings = event["timings"]
    if isinstance(event.get("usage"), dict):
        state.usage = event["usage"]
    if event.get("stop") is True:  # /completion's final event
        state.finish_reason = str(event.get("stop_type") or "stop")
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if isinstance(delta.get("content"), str):
            state.answer.append(delta["content"])
        if isinstance(delta.get("reasoning_content"), str):
            state.reasoning.append(delta["reasoning_content"])
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]


def _error_status(http_status: int | None, text: str) -> tuple[str, str]:
    """(status, short message) for an error body; exceed_context_size_error is a context error."""
    parsed = _loads(text)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("type") or text)
        kind = str(error.get("type") or "")
    else:
        message, kind = (str(error) if error else text.strip()), ""
    prefix = f"HTTP {http_status}: " if http_status else ""
    short = (prefix + message)[:300]
    if kind == "exceed_context_size_error":
        return "context_error", short
    return "http_error", short


def _result(state: _Stream, status: str, http_status: int | None, error: str | None, wall_s: float) -> ChatResult:
    timings, usage = state.timings, state.usage
    prompt_n, cache_n = _int(timings.get("prompt_n")), _int(timings.get("cache_n"))
    prompt_tokens = _int(usage.get("prompt_tokens"))
    if prompt_tokens is None and prompt_n is not None and cache_n is not None:
        prompt_tokens = prompt_n + cache_n
    return ChatResult(
        status=status,
        answer="".join(state.answer),
        reasoning="".join(state.reasoning),
        finish_reason=state.finish_reason,
        prompt_n=prompt_n,
        cache_n=cache_n,
        prompt_tokens=prompt_tokens,
        prompt_ms=_float(timings.get("prompt_ms")),
        predicted_n=_int(timings.get("predicted_n")),
        predicted_ms=_float(timings.get("predicted_ms")),
        draft_n=_int(timings.get("draft_n")),
        draft_n_accepted=_int(timings.get("draft_n_accepted")),
        http_status=http_status,
        error=error,
        wall_s=round(wall_s, 3),
    )


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
