"""The daemon: one process per user serving every notebook over a Unix socket.

``app`` (:class:`~runtimed.daemon.app.Daemon`) wires the parts: the listener, the room
registry, the persister, request handlers (``handlers/``), the HTTP endpoint. ``main`` is the
``runtimed`` command.
"""
