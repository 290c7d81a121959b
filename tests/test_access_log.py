"""A request that aiohttp's own HTTP parser refuses is one access line, without its query string (where a
live launch state or join token may be) and without a traceback."""
from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import Stack

SECRET = "SECRETb9_7ytOBYunBGzxphnlrZEeo"


async def _send(stack: Stack, data: bytes) -> bytes:
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


CALLBACK = f"/launch/callback?state={SECRET}"
MALFORMED = {
    "junk after the version": f"GET {CALLBACK} HTTP/1.1 junk\r\nHost: x\r\n\r\n",
    "a header without a colon": f"GET {CALLBACK} HTTP/1.1\r\nBad Header\r\n\r\n",
    "a control character in the query": f"GET /join?t={SECRET}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "a Content-Length that is not a number": f"POST /join?t={SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
    "a header line over the limit": f"GET {CALLBACK} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 9000}\r\n\r\n",
    "a request line over the limit": f"GET {CALLBACK}&pad={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked framing that is broken":
        f"POST /join?t={SECRET} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "a method that is not a token": f"BR@W {CALLBACK} HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_request_the_parser_refuses_is_one_line_without_its_query(
        stack: Stack, caplog: pytest.LogCaptureFixture, request_bytes: str) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    answer = await _send(stack, request_bytes.encode("latin-1"))
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"431", b"413"), answer[:200]
    await asyncio.sleep(0.1)  # the access line is written as the connection's handler finishes
    ours = [r for r in caplog.records
            if r.name.startswith(("visitgate", "aiohttp", "gateway", "launch", "presence"))]
    lines = [r.getMessage() for r in ours]
    assert len(lines) == 1, lines
    assert lines[0].startswith("- (malformed) 4"), lines
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
        assert record.exc_info is None and record.exc_text is None, record.getMessage()
        assert record.levelno < logging.WARNING, record.getMessage()
    assert SECRET not in caplog.text
