#!/usr/bin/env python3
"""The Python MCP SDK's OAuth client, driven headlessly, for the Portcullis
authorization tests.

Built on the official Python MCP SDK (`mcp` 2.3.0, see requirements.txt; run it
with the interpreter that scripts/pyenv.sh prints). It connects to the MCP
server at URL over streamable HTTP with the SDK's `OAuthClientProvider` as the
httpx2 auth (tokens and registration kept in memory), so a 401 runs the SDK's
whole authorization flow: protected resource metadata (RFC 9728) discovery
from the `WWW-Authenticate` challenge, authorization server metadata,
dynamic client registration, the authorization code request with PKCE and
the `resource` indicator, and the token exchange. The browser step is done
without a browser: the redirect handler GETs the authorization URL with
redirects off and takes `code`, `state` and `iss` from the 302 `Location`
(an authorization server that approves without a login page, such as
tests/fixtures/oauth_server.py, is needed).

Usage:
    oauth_client.py URL [--list] [--tool NAME [--args JSON] [--repeat N]]
                    [--mode auto|legacy|2026-07-28] [--auth-method METHOD]
                    [--client-name NAME] [--redirect-uri URI] [--timeout S]

stdout, one JSON document per line, in this order:
    {"connected": {"server_info": {...} | null, "protocol_version": "..."}}
    {"tools": [...]}              with --list (tools/list result's tools)
    {"result": {...}}             per --tool call (a result with isError
                                  true is still a result)
    {"error": {"stage": "connect" | "list" | "call", "message": "..."}}
                                  on failure, then exit 1

stderr, the OAuth steps as the SDK takes them (one line each, in order;
statuses are the HTTP statuses received):
    oauth-step: challenge STATUS METHOD URL www-authenticate=HEADER
    oauth-step: prm GET URL -> STATUS
    oauth-step: as-metadata GET URL -> STATUS
    oauth-step: register POST URL -> STATUS
    oauth-step: registered client_id=ID token_endpoint_auth_method=METHOD
    oauth-step: authorize GET ENDPOINT resource=R scope=S -> STATUS
    oauth-step: token POST URL grant_type=G resource=R -> STATUS
    oauth-step: authorized METHOD URL -> STATUS      (first request with the token)
then, after the session, one summary line:
    oauth-summary: {"challenge": {"status", "url", "www_authenticate",
                    "resource_metadata"}, "prm_urls": [...tried, in order],
                    "prm_url": the one that answered 200, "as_metadata_urls":
                    [...], "as_metadata_url": ..., "registered": bool,
                    "client_id": ..., "authorize_endpoint": ..., "resource":
                    (the resource sent to /authorize), "scope": ...,
                    "token_requests": [{"grant_type", "resource", "status"}]}
Values absent from the flow (no challenge: the server took no token) are null.

Options:
    --mode MODE            the SDK Client's connect mode: "auto" (the SDK's
                           default: a server/discover probe at 2026-07-28,
                           falling back to initialize), "legacy" or a modern
                           version such as 2026-07-28.
    --auth-method METHOD   token_endpoint_auth_method to register with
                           (client_secret_post, client_secret_basic or none;
                           default: ask none, the server chooses).
    --repeat N             call the tool N times (one result line each).

Exit status: 0 when everything asked for ran; 1 when connecting (the OAuth
flow included), listing or a call failed; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from mcp_client import describe  # the same messages as the other driver
import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

PROG = "oauth_client"
MODES = ("legacy", "auto", *MODERN_PROTOCOL_VERSIONS)


def step(text: str) -> None:
    sys.stderr.write(f"oauth-step: {text}\n")
    sys.stderr.flush()


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def dump(model: Any) -> Any:
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


def without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment=""))


class Trace:
    """What the OAuth flow did, from httpx2 event hooks and the handlers below."""

    def __init__(self, mcp_url: str) -> None:
        self.mcp_url = mcp_url
        self.summary: dict[str, Any] = {
            "challenge": None,
            "prm_urls": [],
            "prm_url": None,
            "as_metadata_urls": [],
            "as_metadata_url": None,
            "registered": False,
            "client_id": None,
            "authorize_endpoint": None,
            "resource": None,
            "scope": None,
            "token_requests": [],
        }
        self.have_token = False
        self.authorized_logged = False

    @staticmethod
    def _form(request: httpx2.Request) -> dict[str, str]:
        try:
            fields = parse_qs(request.content.decode("utf-8"), keep_blank_values=True)
        except Exception:
            return {}
        return {k: v[0] for k, v in fields.items()}

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        url = str(request.url)
        path = request.url.path
        status = response.status_code
        content_type = request.headers.get("content-type", "")
        if path.startswith("/.well-known/oauth-protected-resource"):
            self.summary["prm_urls"].append(url)
            if status == 200 and self.summary["prm_url"] is None:
                self.summary["prm_url"] = url
            step(f"prm GET {url} -> {status}")
        elif path.startswith("/.well-known/oauth-authorization-server") or "openid-configuration" in path:
            self.summary["as_metadata_urls"].append(url)
            if status == 200 and self.summary["as_metadata_url"] is None:
                self.summary["as_metadata_url"] = url
            step(f"as-metadata GET {url} -> {status}")
        elif request.method == "POST" and "application/x-www-form-urlencoded" in content_type:
            form = self._form(request)
            grant = form.get("grant_type")
            resource = form.get("resource")
            self.summary["token_requests"].append({"grant_type": grant, "resource": resource, "status": status})
            step(f"token POST {url} grant_type={grant} resource={resource} -> {status}")
        elif request.method == "POST" and url != self.mcp_url and "application/json" in content_type and (
            b"redirect_uris" in request.content
        ):
            self.summary["registered"] = True
            step(f"register POST {url} -> {status}")
        elif status in (401, 403):
            www = response.headers.get("www-authenticate")
            if self.summary["challenge"] is None:
                metadata = None
                if www:
                    match = re.search(r'resource_metadata=(?:"([^"]+)"|([^\s,]+))', www)
                    metadata = (match.group(1) or match.group(2)) if match else None
                self.summary["challenge"] = {
                    "status": status,
                    "url": url,
                    "www_authenticate": www,
                    "resource_metadata": metadata,
                }
            step(f"challenge {status} {request.method} {url} www-authenticate={www}")
        elif self.have_token and not self.authorized_logged and "authorization" in request.headers:
            self.authorized_logged = True
            step(f"authorized {request.method} {url} -> {status}")


class MemoryStorage(TokenStorage):
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.trace.have_token = True

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
        self.trace.summary["client_id"] = client_info.client_id
        step(
            f"registered client_id={client_info.client_id} "
            f"token_endpoint_auth_method={client_info.token_endpoint_auth_method}"
        )


class HeadlessBrowser:
    """The user agent: follows the authorization URL to the AS, which approves at once."""

    def __init__(self, trace: Trace, timeout: float) -> None:
        self.trace = trace
        self.timeout = timeout
        self.result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        endpoint = without_query(authorization_url)
        self.trace.summary.update(
            {"authorize_endpoint": endpoint, "resource": query.get("resource"), "scope": query.get("scope")}
        )
        async with httpx2.AsyncClient(follow_redirects=False, timeout=self.timeout) as http:
            response = await http.get(authorization_url)
        step(f"authorize GET {endpoint} resource={query.get('resource')} scope={query.get('scope')} "
             f"-> {response.status_code}")
        location = response.headers.get("location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise OAuthFlowError(
                f"authorization endpoint answered {response.status_code} without a redirect: {response.text[:300]}"
            )
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if "error" in params:
            raise OAuthFlowError(
                f"authorization denied: {params['error']}: {params.get('error_description', '')}".rstrip(": ")
            )
        if "code" not in params:
            raise OAuthFlowError(f"redirect carries no code: {without_query(location)}")
        self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        if self.result is None:
            raise OAuthFlowError("no authorization response was received")
        result, self.result = self.result, None
        return result




class Failed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


async def amain(ns: argparse.Namespace, arguments: dict[str, Any]) -> None:
    trace = Trace(ns.url)
    storage = MemoryStorage(trace)
    browser = HeadlessBrowser(trace, ns.timeout)
    metadata = OAuthClientMetadata(
        client_name=ns.client_name,
        redirect_uris=[ns.redirect_uri],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method=ns.auth_method,
    )
    auth = OAuthClientProvider(
        server_url=ns.url,
        client_metadata=metadata,
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
    )
    http_client = httpx2.AsyncClient(
        auth=auth,
        timeout=httpx2.Timeout(ns.timeout, read=300.0),
        event_hooks={"response": [trace.on_response]},
    )
    stage = "connect"
    try:
        async with http_client:
            client = Client(
                streamable_http_client(ns.url, http_client=http_client),
                mode=ns.mode,
                read_timeout_seconds=ns.timeout,
            )
            async with client:
                emit({"connected": {
                    "server_info": dump(client.server_info) if client.server_info is not None else None,
                    "protocol_version": client.protocol_version,
                }})
                if ns.list:
                    stage = "list"
                    listed = await client.list_tools()
                    emit({"tools": [dump(tool) for tool in listed.tools]})
                if ns.tool:
                    stage = "call"
                    for _ in range(ns.repeat):
                        emit({"result": dump(await client.call_tool(ns.tool, arguments))})
    except Exception as exc:  # ExceptionGroup included
        raise Failed(stage, describe(exc)) from None
    finally:
        sys.stderr.write("oauth-summary: " + json.dumps(trace.summary) + "\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="oauth_client.py", description="MCP SDK client with the SDK's OAuth flow, driven headlessly."
    )
    p.add_argument("url", help="the MCP endpoint URL (streamable HTTP)")
    p.add_argument("--list", action="store_true", help="tools/list; prints {\"tools\": [...]}")
    p.add_argument("--tool", help="tools/call this tool; prints {\"result\": ...}")
    p.add_argument("--args", default="{}", help="the tool's arguments, a JSON object (default {})")
    p.add_argument("--repeat", type=int, default=1, help="call the tool this many times (default 1)")
    p.add_argument("--mode", default="auto", help="the SDK Client's mode: auto (default), legacy, or a version")
    p.add_argument(
        "--auth-method",
        choices=("client_secret_post", "client_secret_basic", "none"),
        help="token_endpoint_auth_method to register with (default: unset, the server chooses)",
    )
    p.add_argument("--client-name", default="portcullis-oauth-test-client", help="client_name to register")
    p.add_argument("--redirect-uri", default="http://localhost:3030/callback", help="redirect URI to register")
    p.add_argument("--timeout", type=float, default=30.0, help="request timeout, seconds (default 30)")
    try:
        ns = p.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if ns.mode not in MODES:
        print(f"{PROG}: --mode must be one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    try:
        arguments = json.loads(ns.args)
    except json.JSONDecodeError as e:
        print(f"{PROG}: --args is not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print(f"{PROG}: --args must be a JSON object", file=sys.stderr)
        return 2
    if ns.repeat < 1:
        print(f"{PROG}: --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        anyio.run(amain, ns, arguments)
    except Failed as e:
        emit({"error": {"stage": e.stage, "message": e.message}})
        print(f"{PROG}: {e.stage} failed: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
