"""``SendComm``: a client's comm message to the notebook's kernel (a widget frontend's
update), through the running kernel's :class:`~runtimed.kernels.comms.CommTracker`, which
also updates the comm's state so the runtime document (and every late client) sees it.
"""

from __future__ import annotations

from protocol.messages import CommSent, SendComm
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.rooms import RoomRegistry
from runtimed.errors import InvalidRequest

__all__ = ["CommHandlers"]


class CommHandlers:
    """Comm messages from clients to a notebook's running kernel."""

    def __init__(self, rooms: RoomRegistry) -> None:
        self._rooms = rooms

    async def send(self, session: ClientSession, request: SendComm) -> CommSent:
        """Send the comm message; the reply says it went to the kernel.

        Raises:
            NotebookNotFound, KernelNotRunning, CommNotFound (no open comm with that id),
            InvalidRequest (a state over the size limit, buffers not matching
            ``buffer_paths``, ``data.method`` not a string).
        """
        method = request.data.get("method")
        if method is not None and not isinstance(method, str):
            raise InvalidRequest(f"comm data 'method' must be a string, not {method!r}")
        entry = self._rooms.joined(session, request.notebook_id)
        kernel = self._rooms.executor(entry).running_kernel()
        kernel.send_comm(request.comm_id, dict(request.data), list(request.buffers))
        return CommSent(id=request.id, notebook_id=request.notebook_id, comm_id=request.comm_id)
