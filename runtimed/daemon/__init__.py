"""The daemon: one process per user serving every notebook over a Unix socket.

``app`` (:class:`~runtimed.daemon.app.Daemon`) wires the parts: the listener and client
sessions (``connection``), the room registry (``rooms``; each room in its own supervised scope,
``scope``, with its persister, ``persister``, and executor, ``executor``), request handlers
(``handlers/``), the HTTP endpoint. ``main`` is the ``runtimed`` command.
"""
