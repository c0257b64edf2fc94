"""The agent interface: notebook tools for AI agents, over MCP (``runt mcp``) or without it.

:mod:`runtimed.mcp.tools` is the tool set (plain async functions over the Python client),
:mod:`runtimed.mcp.session` the session that survives daemon restarts,
:mod:`runtimed.mcp.outputs` the bounded output views and :mod:`runtimed.mcp.server` the MCP
stdio server. See docs/agents.md.
"""
