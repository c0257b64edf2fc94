"""The agent interface: notebook tools for AI agents, over MCP (``runt mcp``) or without it.

:mod:`runtimed.mcp.tools` is the tool set (names, schemas, validation, :func:`call_tool`;
the functions themselves, over the Python client, are in :mod:`runtimed.mcp.handlers`),
:mod:`runtimed.mcp.session` the session that survives daemon restarts,
:mod:`runtimed.mcp.outputs` the bounded output views and :mod:`runtimed.mcp.server` the MCP
stdio server. See docs/agents.md.
"""
