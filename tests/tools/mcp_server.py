"""A real MCP tool server (the ``mcp`` SDK) for the tests: ``python mcp_server.py`` speaks
stdio; ``python mcp_server.py --http PORT`` speaks Streamable HTTP on 127.0.0.1:PORT/mcp.

Tools: check_prescription (the happy path), slow (sleeps past any timeout), crash (the
process dies mid-call), bad_result (a result that breaks its own output schema) and
delete_records (a tool no agent allows)."""

from __future__ import annotations

import os
import sys
import threading

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

app = MCPServer("pharmacy-test")
PRESCRIPTIONS = {"1234567": "ready", "7654321": "being filled"}


class Status(BaseModel):
    rx_number: str
    status: str


@app.tool()
def check_prescription(rx_number: str) -> str:
    """The status of a prescription by its number (5 to 8 digits)."""
    status = PRESCRIPTIONS.get(rx_number)
    if status is None:
        raise ValueError(f"no prescription {rx_number}")
    return f"Prescription {rx_number} is {status}."


@app.tool()
def slow(seconds: float) -> str:
    """Takes its time."""
    threading.Event().wait(seconds)  # an answer that comes only after the caller gave up
    return "finally"


@app.tool()
def crash(code: int = 3) -> str:
    """Dies in the middle of the call."""
    os._exit(code)


@app.tool(structured_output=True)
def bad_result(rx_number: str) -> Status:
    """Answers with a result its own schema forbids."""
    return Status.model_construct(rx_number=rx_number, status=12)  # type: ignore[arg-type]


@app.tool()
def delete_records(confirm: bool) -> str:
    """Deletes every record (no agent may call this)."""
    return "deleted"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
