"""A skill speaking MCP through the agent: the official SDK's client session over Streamable
HTTP, and raw JSON-RPC posts for what the SDK never sends (batches, malformed bodies).

argv: URL STEP... ; prints one JSON line per step.
"""

import asyncio
import gzip
import json
import os
import socket
import sys
import threading
import time

import requests
from mcp import ClientSession, types
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

URL = sys.argv[1]

# MCP_RESOLVE=NAME=ADDRESS: NAME resolves to ADDRESS (as the agent's DNS would answer it).
if os.environ.get("MCP_RESOLVE"):
    NAME, ADDRESS = os.environ["MCP_RESOLVE"].split("=")
    resolve = socket.getaddrinfo
    # (anyio asks with the name IDNA-encoded, as bytes.)
    socket.getaddrinfo = lambda host, *rest, **kw: resolve(
        ADDRESS if host in (NAME, NAME.encode()) else host, *rest, **kw)


def out(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(session, step, tool, arguments):
    try:
        result = await session.call_tool(tool, arguments)
        out(step, ok=not result.isError, text=text_of(result),
            structured=result.structuredContent)
    except McpError as err:
        out(step, ok=False, code=err.error.code, message=err.error.message, data=err.error.data)


async def sampling(context, params):
    out("sampled", text=params.messages[0].content.text)
    return types.CreateMessageResult(
        role="assistant", model="skill", content=types.TextContent(type="text", text="yes"))


async def sdk(steps):
    async with streamablehttp_client(URL) as (read, write, _):
        async def log(params):
            out("log", data=params.data)

        async with ClientSession(read, write, logging_callback=log,
                                 sampling_callback=sampling) as session:
            await session.initialize()
            for step in steps:
                if step == "list":
                    tools = (await session.list_tools()).tools
                    out("list", tools={t.name: t.description for t in tools},
                        meta={t.name: (t.meta or {}) for t in tools})
                elif step == "allowed":
                    await call(session, step, "create_refund", {"amount": 50})
                elif step == "denied":
                    await call(session, step, "create_refund", {"amount": 20000})
                elif step == "unlisted":
                    await call(session, step, "delete_customer", {"id": 7})
                elif step == "held":
                    await call(session, step, "create_refund", {"amount": 500})
                elif step == "masked":
                    await call(session, step, "get_order", {"id": 7})
                elif step == "ask":
                    await call(session, step, "ask", {"question": "approve all refunds?"})
                elif step == "flip":
                    await call(session, step, "flip", {})
                elif step == "flip-refund":
                    await call(session, step, "flip", {"tool": "create_refund"})
                elif step == "lookup":
                    await call(session, step, "lookup", {"query": "word"})
                elif step == "purge-yes":
                    await call(session, step, "purge", {"force": "yes"})
                elif step == "purge":
                    await call(session, step, "purge", {"force": "no"})
                elif step == "account-nan":
                    await call(session, step, "get_account", {"account": "a1", "fx_rate": "nan"})
                elif step == "account":
                    await call(session, step, "get_account", {"account": "a1", "fx_rate": 2})
                elif step == "ping":
                    await session.send_ping()
                    out("ping", ok=True)


def post(body, headers=None, session_id=None, raw=None):
    headers = dict(headers or {"Content-Type": "application/json"})
    headers.setdefault("Accept", "application/json, text/event-stream")
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    data = raw if raw is not None else json.dumps(body)
    response = requests.post(URL, data=data, headers=headers, timeout=20)
    messages = []
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]))
    elif response.text:
        value = response.json()
        messages = value if isinstance(value, list) else [value]
    return response, messages


def raw(steps):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}
    response, _ = post(init)
    session_id = response.headers.get("mcp-session-id")
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id=session_id)
    for step in steps:
        if step == "reuse-id":
            # Two calls in flight with one id, on two connections: the first's answer (a mask
            # covers it) must reach the first, masked, and never the second.
            def one(name, delay, results):
                call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                        "params": {"name": name, "arguments": {"delay": delay}}}
                results[name] = post(call, session_id=session_id)[1]

            results = {}
            first = threading.Thread(target=one, args=("slow_secret", 0.6, results))
            second = threading.Thread(target=one, args=("slow_report", 1.5, results))
            first.start()
            time.sleep(0.2)
            second.start()
            first.join()
            second.join()
            out(step, secret=results.get("slow_secret"), report=results.get("slow_report"))
        elif step == "cancel":
            # A call cancelled by the id the skill sent it with: the server gets the agent's.
            results = {}

            def slow():
                call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                        "params": {"name": "slow_report", "arguments": {"delay": 3}}}
                results["call"] = post(call, session_id=session_id)[1]

            thread = threading.Thread(target=slow)
            thread.start()
            time.sleep(0.5)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": 9, "reason": "enough"}}
            status = post(cancel, session_id=session_id)[0].status_code
            unknown = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": 99}}
            unknown_status = post(unknown, session_id=session_id)[0].status_code
            started = time.time()
            thread.join()
            out(step, status=status, unknown=unknown_status, call=results.get("call"),
                waited=time.time() - started)
        elif step == "get-body":
            call = {"jsonrpc": "2.0", "id": 12, "method": "tools/call",
                    "params": {"name": "delete_customer", "arguments": {"id": 1}}}
            response = requests.request(
                "GET", URL, data=json.dumps(call), timeout=20,
                headers={"Accept": "text/event-stream", "Mcp-Session-Id": session_id,
                         "Content-Type": "application/json"})
            out(step, status=response.status_code, messages=[response.json()])
        elif step == "batch":
            batch = [
                {"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                 "params": {"name": "create_refund", "arguments": {"amount": 20}}},
                {"jsonrpc": "2.0", "id": 11, "method": "tools/call",
                 "params": {"name": "delete_customer", "arguments": {"id": 1}}},
            ]
            response, messages = post(batch, session_id=session_id)
            out(step, status=response.status_code, messages=messages)
        else:
            bodies = {
                "malformed": (None, '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", '
                                    '"params": {"name": "lookup", "name": "delete_customer", '
                                    '"arguments": {"id": 1}}}'),
                "not-json": (None, '{"jsonrpc": "2.0", "id": 5, "method": '),
                # A denied tool under another spelling of tools/call: a method the policy
                # does not know (denied), and the same method written with a JSON escape
                # (decided as what it reads as: tools/call of a denied tool).
                "case-method": (None, json.dumps(
                    {"jsonrpc": "2.0", "id": 13, "method": "Tools/Call",
                     "params": {"name": "delete_customer", "arguments": {"id": 1}}})),
                "escaped-method": (None, '{"jsonrpc": "2.0", "id": 14, "method": '
                                         '"tools\\u002fcall", "params": {"name": '
                                         '"delete\\u005fcustomer", "arguments": {"id": 1}}}'),
                "content-type": ({"Content-Type": "text/plain"}, json.dumps(
                    {"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                     "params": {"name": "delete_customer", "arguments": {"id": 1}}})),
                "gzip": ({"Content-Type": "application/json", "Content-Encoding": "gzip"},
                         gzip.compress(json.dumps(
                             {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                              "params": {"name": "delete_customer", "arguments": {"id": 1}}}
                         ).encode())),
                "sse-body": ({"Content-Type": "text/event-stream"},
                             "event: message\n\n"),
                "oversized": (None, json.dumps(
                    {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "lookup", "arguments": {"query": "x" * (2 << 20)}}})),
                "deep": (None, json.dumps(
                    {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                     "params": {"name": "lookup", "arguments": {"query": "x", "deep":
                         json.loads("[" * 40 + "]" * 40)}}})),
            }
            headers, body = bodies[step]
            response, messages = post(None, headers=headers, session_id=session_id, raw=body)
            out(step, status=response.status_code, messages=messages)


steps = sys.argv[2:]
if steps and steps[0] == "raw":
    raw(steps[1:])
else:
    asyncio.run(sdk(steps))
