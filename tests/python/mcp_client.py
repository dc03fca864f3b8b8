#!/usr/bin/env python3
"""Command-line MCP client for the Portcullis integration tests.

Built on the official Python MCP SDK (`mcp` 2.3.0, see requirements.txt; run it
with the interpreter that scripts/pyenv.sh prints). It connects over stdio or
streamable HTTP, performs the handshake, runs a script of operations in order
and prints exactly one JSON document on stdout:

    {"server_info": {...} | null, "protocol_version": "2025-11-25",
     "results": [{"op": "list_tools", "ok": true, "result": {...}},
                 {"op": "call:x:{}", "ok": false,
                  "error": {"code": -32602, "message": "...", "data": ...}}]}

Usage:
    mcp_client.py stdio [OPTIONS] -- CMD [ARGS...]
    mcp_client.py http URL [--token TOKEN] [OPTIONS]
    mcp_client.py sse URL [--token TOKEN] [OPTIONS]   (HTTP+SSE, the 2024-11-05
                                                      transport: URL is the GET stream's)

All options (including --op) go before the `--` in stdio mode; everything
after the first `--` is the server command line.

Operations (--op, repeatable, run in the order given):
    list_tools | list_resources | list_resource_templates | list_prompts | ping
    call:TOOL[:JSON_OBJECT]        tools/call (arguments default to {})
    read:URI                       resources/read
    prompt:NAME[:JSON_OBJECT]      prompts/get (values must be strings)
    raw:METHOD[:JSON_OBJECT]       any request; result is the raw JSON object
    listen:TOOL@URI                (2026-07-28) open a subscriptions/listen stream for
                                   tools list changes and URI's updates, call TOOL with
                                   {"uri": URI}, and report what the stream was granted
                                   ("honored") and its first event ("event"), waiting
                                   up to 30 s for it

A tool result with isError=true is still ok:true (it is a successful JSON-RPC
response). An error the server returns (JSON-RPC error object), a per-request
timeout (code -32001) and a result the SDK rejects as malformed are reported
per op as ok:false; "error" then has "code" (null when the SDK rejected the
result locally), "message", optionally "data", and in HTTP mode "http_status"
when that request's HTTP response was an error status. Errors the SDK raised
locally also carry "kind": "invalid_result" or "client".

Exit status: 0 when every op ran (whatever their ok); 1 when the connection or
the handshake failed or the transport died mid-script (message on stderr,
nothing on stdout); 2 on bad usage.

Other options:
    --mode legacy          (default) the initialize handshake, protocol 2025-11-25.
    --mode auto            what the SDK's Client does by default: a server/discover
                           probe at 2026-07-28 first, falling back to initialize
                           when the server answers it with an error.
    --mode 2026-07-28      the stateless 2026 envelope, no handshake at all.
    --no-validate          call: send tools/call alone. By default the SDK's
                           Client.call_tool sends tools/list after a successful
                           call of a tool this session has not listed yet (put
                           --op list_tools first to avoid it) and checks
                           structuredContent against the tool's outputSchema; an
                           error of that tools/list is reported as the call's.
    --exclude-unset        dump with exclude_unset=True too. The SDK's models fill
                           in defaults the server never sent (resultType,
                           ttlMs, cacheScope on list results) and drop fields
                           they do not know (x-... extensions); raw:METHOD
                           shows the result exactly as received.
    --timeout SECONDS      per-request timeout (default 30).
    --token, --header      http: request headers (Authorization: Bearer TOKEN).
    --env K=V, --cwd DIR   stdio: the server inherits this process's whole
                           environment plus --env (the SDK alone would pass
                           only HOME, LOGNAME, PATH, SHELL, TERM and USER).

Options that add keys to the document:
    --sampling-reply TEXT  advertise the sampling capability and answer every
                           sampling/createMessage with an assistant text message
                           TEXT (model "test-model"); adds "sampling_requests":
                           the params of each request received.
    --elicit-reply NAME    advertise the elicitation capability and accept every
                           elicitation/create with content {"name": NAME}; adds
                           "elicitation_requests": the params of each received.
    --elicit-action ACTION with --elicit-reply: answer every elicitation/create
                           with this action instead (accept, decline, cancel).
    --notifications        adds "notifications": the server notifications seen.
    --http-trace           (http) adds "http_trace": one entry per HTTP request
                           (method, url, request headers, JSON-RPC method/id,
                           response status and content type).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter, ValidationError

PROG = "mcp_client"
LIST_OPS = ("list_tools", "list_resources", "list_resource_templates", "list_prompts", "ping")
MODES = ("legacy", "auto", *MODERN_PROTOCOL_VERSIONS)


class UsageError(Exception):
    pass


class TransportFailure(Exception):
    pass


EXCLUDE_UNSET = False


def dump(model: Any) -> Any:
    """A pydantic model (or plain JSON value) as plain JSON, per the test contract."""
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=EXCLUDE_UNSET)
    return model


# --------------------------------------------------------------------------- ops


@dataclass
class Op:
    text: str
    kind: str
    name: str | None = None
    args: dict[str, Any] | None = None


def _json_object(text: str, op: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--op {op!r}: invalid JSON arguments: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--op {op!r}: arguments must be a JSON object")
    return value


def parse_op(text: str) -> Op:
    if text in LIST_OPS:
        return Op(text, text)
    kind, sep, rest = text.partition(":")
    if kind == "listen" and sep:
        tool, at, uri = rest.partition("@")
        if not tool or not at or not uri:
            raise UsageError(f"--op {text!r}: expected listen:TOOL@URI")
        return Op(text, kind, name=tool, args={"uri": uri})
    if not sep or kind not in ("call", "read", "prompt", "raw"):
        raise UsageError(
            f"--op {text!r}: expected one of {', '.join(LIST_OPS)}, call:TOOL[:JSON], read:URI, "
            "prompt:NAME[:JSON], raw:METHOD[:JSON]"
        )
    if kind == "read":
        if not rest:
            raise UsageError(f"--op {text!r}: empty URI")
        return Op(text, kind, name=rest)
    # Tool/prompt names and methods hold no ':'; everything after the next one is JSON.
    name, sep, args = rest.partition(":")
    if not name:
        raise UsageError(f"--op {text!r}: empty name")
    parsed = _json_object(args, text) if sep else None
    if kind == "prompt" and parsed is not None:
        bad = [k for k, v in parsed.items() if not isinstance(v, str)]
        if bad:
            raise UsageError(f"--op {text!r}: prompt arguments must be strings (not: {', '.join(bad)})")
    return Op(text, kind, name=name, args=parsed)


_RAW_RESULT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


async def run_op(client: Client, op: Op, validate: bool) -> Any:
    if op.kind == "list_tools":
        return await client.list_tools()
    if op.kind == "list_resources":
        return await client.list_resources()
    if op.kind == "list_resource_templates":
        return await client.list_resource_templates()
    if op.kind == "list_prompts":
        return await client.list_prompts()
    if op.kind == "ping":
        return await client.session.send_ping()
    if op.kind == "call":
        arguments = op.args if op.args is not None else {}
        if not validate:
            # tools/call on the wire and nothing else: Client.call_tool would also send
            # tools/list (for an unlisted tool) and check structuredContent against outputSchema.
            # A 2026-07-28 input_required result is driven as Client.call_tool drives it:
            # the questions answered by the callbacks, the call retried with the answers.
            session = client.session

            async def retry(responses: Any, state: str | None) -> Any:
                params = types.CallToolRequestParams(
                    name=op.name, arguments=arguments, input_responses=responses, request_state=state
                )
                adapter = session._call_tool_adapter  # pyright: ignore[reportPrivateUsage]
                return await session.send_request(types.CallToolRequest(params=params), adapter)

            drive = client._drive_input_required  # pyright: ignore[reportPrivateUsage]
            return await drive(await retry(None, None), retry)
        return await client.call_tool(op.name, arguments)
    if op.kind == "read":
        return await client.read_resource(op.name)
    if op.kind == "prompt":
        return await client.get_prompt(op.name, op.args)
    if op.kind == "listen":
        uri = (op.args or {})["uri"]
        async with client.listen(tools_list_changed=True, resource_subscriptions=[uri]) as sub:
            honored = dump(sub.honored)
            await client.call_tool(op.name, {"uri": uri})
            with anyio.fail_after(30):
                event = await sub.__anext__()
        return {"honored": honored, "event": dump(event) if hasattr(event, "model_dump") else repr(event)}
    if op.kind == "raw":
        request = types.Request[dict[str, Any] | None, str](method=op.name, params=op.args)
        return await client.session.send_request(request, _RAW_RESULT)
    raise AssertionError(op.kind)


# --------------------------------------------------------------------- transports


class EofWatchingStream:
    """Wraps a transport's read stream and records when it ends.

    The SDK reports a dead transport to a waiting request as a JSON-RPC error
    with code -32000 (CONNECTION_CLOSED), a code servers may use themselves;
    this flag tells the two apart.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.eof = False

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context` on HTTP streams
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.eof = True
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> EofWatchingStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> EofWatchingStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._inner.__aexit__(*exc)


@dataclass
class HttpRecorder:
    """httpx2 event hooks: what was sent over HTTP and what status came back."""

    trace: list[dict[str, Any]] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        entry: dict[str, Any] = {
            "method": request.method,
            "url": str(request.url),
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
        }
        if request.method == "POST":
            try:
                body = json.loads(request.content)
            except Exception:
                body = None
            if isinstance(body, dict):
                if "method" in body:
                    entry["rpc_method"] = body["method"]
                if "id" in body:
                    entry["rpc_id"] = body["id"]
        request.extensions["portcullis_trace"] = entry
        self.trace.append(entry)

    async def on_response(self, response: httpx2.Response) -> None:
        entry = response.request.extensions.get("portcullis_trace")
        if entry is None:
            return
        entry["status"] = response.status_code
        entry["content_type"] = response.headers.get("content-type")


@dataclass
class Watch:
    stream: EofWatchingStream | None = None

    @property
    def eof(self) -> bool:
        return self.stream is not None and self.stream.eof


def watched(transport: Any, watch: Watch) -> Any:
    @asynccontextmanager
    async def cm():  # type: ignore[no-untyped-def]
        async with transport as (read_stream, write_stream):
            watch.stream = EofWatchingStream(read_stream)
            yield watch.stream, write_stream

    return cm()


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp_client.py",
        description="Scripted MCP client (mcp SDK) printing one JSON document.",
        epilog="stdio mode: put the server command after '--'.",
    )
    p.add_argument("transport", choices=("stdio", "http", "sse"))
    p.add_argument("url", nargs="?", help="http: the MCP endpoint URL")
    p.add_argument("--op", action="append", default=[], metavar="OP", help="operation to run (repeatable)")
    p.add_argument("--token", help="http: send 'Authorization: Bearer TOKEN'")
    p.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="http: extra request header"
    )
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="stdio: extra environment variable")
    p.add_argument("--cwd", help="stdio: working directory of the server")
    p.add_argument(
        "--mode",
        default="legacy",
        help="handshake: 'legacy' (initialize, default), 'auto' (the SDK's default: "
        "server/discover probe, falling back to initialize) or a modern version such as 2026-07-28",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-request read timeout, seconds (default 30)")
    p.add_argument("--sampling-reply", metavar="TEXT", help="answer sampling/createMessage with this text")
    p.add_argument("--elicit-reply", metavar="NAME", help='accept elicitation/create with {"name": NAME}')
    p.add_argument(
        "--elicit-action",
        choices=["accept", "decline", "cancel"],
        default="accept",
        help="with --elicit-reply: the action every elicitation/create is answered with",
    )
    p.add_argument("--notifications", action="store_true", help="record server notifications in the output")
    p.add_argument("--http-trace", action="store_true", help="http: record HTTP requests in the output")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="call: send only tools/call (the SDK's Client.call_tool first sends tools/list for a tool "
        "it has not listed yet, and checks structuredContent against the tool's outputSchema)",
    )
    p.add_argument(
        "--exclude-unset",
        action="store_true",
        help="dump results with exclude_unset=True too, dropping SDK model defaults the server did "
        "not send (e.g. resultType, ttlMs, cacheScope)",
    )
    p.add_argument("--ca", metavar="FILE", help="http: trust this CA (PEM) for https")
    p.add_argument("--client-cert", metavar="FILE", help="http: present this client certificate (PEM; mTLS)")
    p.add_argument("--client-key", metavar="FILE", help="http: the client certificate's key (PEM)")
    p.add_argument("--client-name", default="portcullis-test-client", help="clientInfo.name")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        own, command = argv[:i], argv[i + 1 :]
    else:
        own, command = argv, []
    parser = build_parser()
    try:
        ns = parser.parse_intermixed_args(own)
    except SystemExit as e:
        raise SystemExit(2 if e.code else 0) from None
    if ns.transport == "stdio":
        if not command:
            parser.error("stdio mode needs the server command after '--'")
        if ns.url is not None:
            parser.error(f"unexpected argument {ns.url!r} (put the server command after '--')")
        if ns.token or ns.header or ns.http_trace:
            parser.error("--token/--header/--http-trace are for http mode")
    else:
        if ns.url is None:
            parser.error("http mode needs a URL")
        if command:
            parser.error("http mode takes no command after '--'")
        if ns.env or ns.cwd:
            parser.error("--env/--cwd are for stdio mode")
    if ns.mode not in MODES:
        parser.error(f"--mode must be one of {', '.join(MODES)}")
    return ns, command


def unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else `exc`."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """A one-line message for a (possibly grouped) exception."""
    exc = unwrap(exc)
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message}"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


async def amain(ns: argparse.Namespace, command: list[str], ops: list[Op]) -> dict[str, Any]:
    watch = Watch()
    recorder: HttpRecorder | None = None
    notifications: list[Any] = []
    sampling_requests: list[Any] = []
    elicitation_requests: list[Any] = []

    if ns.transport == "stdio":
        env = dict(os.environ)  # the SDK would otherwise pass only HOME, PATH, SHELL, TERM, USER, LOGNAME
        for item in ns.env:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise UsageError(f"--env {item!r}: expected K=V")
            env[k] = v
        params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=ns.cwd)
        transport = stdio_client(params, errlog=sys.stderr)
    else:
        headers: dict[str, str] = {}
        if ns.token is not None:
            headers["Authorization"] = f"Bearer {ns.token}"
        for item in ns.header:
            k, sep, v = item.partition(":")
            if not sep or not k.strip():
                raise UsageError(f"--header {item!r}: expected 'Name: value'")
            headers[k.strip()] = v.strip()
        recorder = HttpRecorder()
        # The SDK's own defaults (create_mcp_http_client): 30 s, 300 s read for SSE streams.
        verify: Any = True
        if ns.ca is not None or ns.client_cert is not None:
            verify = ssl.create_default_context(cafile=ns.ca)
            if ns.client_cert is not None:
                verify.load_cert_chain(ns.client_cert, ns.client_key)
        hooks = {"request": [recorder.on_request], "response": [recorder.on_response]}
        if ns.transport == "sse":
            # The SDK makes its own client (one for the stream and the POSTs):
            # this one, with the tests' headers, trust and trace.
            def client_factory(**_: Any) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(
                    verify=verify, headers=headers, timeout=httpx2.Timeout(30.0, read=300.0), event_hooks=hooks
                )

            transport = sse_client(ns.url, httpx_client_factory=client_factory)
        else:
            http_client = httpx2.AsyncClient(
                verify=verify,
                headers=headers,
                timeout=httpx2.Timeout(30.0, read=300.0),
                event_hooks=hooks,
            )
            transport = streamable_http_client(ns.url, http_client=http_client)

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            print(f"{PROG}: transport reported: {describe(message)}", file=sys.stderr)
        elif ns.notifications:
            notifications.append(dump(message))

    sampling_callback = None
    if ns.sampling_reply is not None:

        async def sampling_callback(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult:
            sampling_requests.append(dump(params))
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text=ns.sampling_reply),
                model="test-model",
                stop_reason="endTurn",
            )

    elicitation_callback = None
    if ns.elicit_reply is not None:

        async def elicitation_callback(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult:
            elicitation_requests.append(dump(params))
            if ns.elicit_action != "accept":
                return types.ElicitResult(action=ns.elicit_action)
            return types.ElicitResult(action="accept", content={"name": ns.elicit_reply})

    results: list[dict[str, Any]] = []
    client = Client(
        watched(transport, watch),
        mode=ns.mode,
        read_timeout_seconds=ns.timeout,
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        message_handler=on_message,
        client_info=types.Implementation(name=ns.client_name, version="0.1.0"),
        cache=None,  # every op must reach the wire
    )
    connected = False
    try:
        async with client:
            connected = True
            doc: dict[str, Any] = {
                "server_info": dump(client.server_info) if client.server_info is not None else None,
                "protocol_version": client.protocol_version,
                "results": results,
            }
            for op in ops:
                try:
                    result = await run_op(client, op, validate=not ns.no_validate)
                    results.append({"op": op.text, "ok": True, "result": dump(result)})
                except MCPError as e:
                    if e.code == CONNECTION_CLOSED and watch.eof:
                        raise TransportFailure(f"connection closed during op {op.text!r}: {e.message}") from None
                    error: dict[str, Any] = {"code": e.code, "message": e.message}
                    if e.data is not None:
                        error["data"] = e.data
                    results.append({"op": op.text, "ok": False, "error": error})
                except ValidationError as e:
                    msg = f"server result failed validation: {e}"
                    results.append(
                        {"op": op.text, "ok": False, "error": {"code": None, "message": msg, "kind": "invalid_result"}}
                    )
                except (RuntimeError, ValueError) as e:
                    results.append(
                        {"op": op.text, "ok": False, "error": {"code": None, "message": str(e), "kind": "client"}}
                    )
                if recorder is not None and not results[-1]["ok"]:
                    status = _last_error_status(recorder)
                    if status is not None:
                        results[-1]["error"]["http_status"] = status
    except Exception as exc:  # ExceptionGroup included (anyio task groups wrap what they raise)
        leaf = unwrap(exc)
        if isinstance(leaf, UsageError | TransportFailure):
            raise leaf from None
        where = "session" if connected else "connect/handshake"
        detail = describe(leaf)
        if recorder is not None and (status := _last_error_status(recorder)) is not None:
            detail += f" (HTTP {status})"
        raise TransportFailure(f"{where} failed: {detail}") from None

    if ns.sampling_reply is not None:
        doc["sampling_requests"] = sampling_requests
    if ns.elicit_reply is not None:
        doc["elicitation_requests"] = elicitation_requests
    if ns.notifications:
        doc["notifications"] = notifications
    if ns.http_trace and recorder is not None:
        doc["http_trace"] = recorder.trace
    return doc


def _last_error_status(recorder: HttpRecorder) -> int | None:
    """The HTTP status of the most recent JSON-RPC request POST, if it was an error status."""
    for entry in reversed(recorder.trace):
        if entry.get("method") == "POST" and "rpc_method" in entry and "status" in entry:
            return entry["status"] if entry["status"] >= 400 else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        ns, command = parse_args(argv)
        ops = [parse_op(text) for text in ns.op]
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    global EXCLUDE_UNSET
    EXCLUDE_UNSET = ns.exclude_unset
    try:
        doc = anyio.run(amain, ns, command, ops)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except TransportFailure as e:
        print(f"{PROG}: transport failure: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # noqa: BLE001 - last resort: never a traceback-less silent failure
        print(f"{PROG}: unexpected error: {describe(e)}", file=sys.stderr)
        import traceback

        traceback.print_exception(e, file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(doc, indent=None if ns.compact else 2, sort_keys=False) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
