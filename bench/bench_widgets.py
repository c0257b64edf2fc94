"""Widget state update round trip: a client moves an IntSlider and waits until the kernel's
``observe`` callback has run — the callback copies the value into a second widget, and the
client sees that widget's new state — through the daemon (``SendComm`` → kernel → IOPub
``comm_msg`` → runtime document → client replica) vs a bare jupyter_client ``comm_msg`` on
the same kind of kernel, waiting for the second widget's IOPub update.

Run: ``python bench/bench_widgets.py [N]`` (default 300). Prints medians, p99s and the ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, percentile, summary, write_notebook
from runtimed.client import AsyncClient

SETUP = """\
import ipywidgets as widgets
slider = widgets.IntSlider(value=0, max=1_000_000)
echo = widgets.IntText(value=-1)
def copy(change):
    echo.value = change["new"]
slider.observe(copy, names="value")
display(slider, echo)
"""
IDS = "print(slider.model_id, echo.model_id)"


def bare_loop(n: int, extra_arguments: list[str]) -> list[float]:
    """The peer: comm_msg update on shell, wait for the echo widget's update on IOPub."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=extra_arguments)
    try:
        kc.execute_interactive(SETUP, timeout=30, output_hook=lambda msg: None)
        printed: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["header"]["msg_type"] == "stream":
                printed.append(msg["content"]["text"])

        kc.execute_interactive(IDS, timeout=30, output_hook=hook)
        slider, echo = "".join(printed).split()
        times = []
        for value in range(1, n + 21):
            data = {"method": "update", "state": {"value": value}, "buffer_paths": []}
            msg = kc.session.msg("comm_msg", {"comm_id": slider, "data": data})
            start = time.perf_counter()
            kc.shell_channel.send(msg)
            while True:
                got = kc.get_iopub_msg(timeout=10)
                content = got["content"]
                if (
                    got["header"]["msg_type"] == "comm_msg"
                    and content.get("comm_id") == echo
                    and content["data"].get("state", {}).get("value") == value
                ):
                    break
            times.append(time.perf_counter() - start)
        return times[20:]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


async def daemon_loop(sock: Path, work: Path, n: int) -> list[float]:
    path = write_notebook(work / "widgets.ipynb", [SETUP])
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        assert (await nb.execute("c0")).status == "ok"

        def named(name: str) -> str | None:
            ids = [c for c, m in nb.runtime.comms().items() if m.get("model_name") == name]
            return ids[0] if ids else None

        await client.wait_until(lambda: named("IntTextModel") is not None, timeout=30)
        slider, echo = named("IntSliderModel"), named("IntTextModel")
        assert slider is not None
        assert echo is not None
        times = []
        for value in range(1, n + 21):

            def arrived(v: int = value) -> bool:
                return bool(nb.runtime.comms()[echo]["state"].get("value") == v)

            start = time.perf_counter()
            await nb.send_comm(
                slider, {"method": "update", "state": {"value": value}, "buffer_paths": []}
            )
            await client.wait_until(arrived, timeout=10)
            times.append(time.perf_counter() - start)
        return times[20:]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    from runtimed.runtimes.registry import MEMORY_HISTORY_ARG, NO_EXECUTE_SLEEP_ARG

    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    bare = bare_loop(n, [NO_EXECUTE_SLEEP_ARG, MEMORY_HISTORY_ARG])
    with daemon_process() as (sock, _proc, work):
        ours = anyio.run(daemon_loop, sock, work, n, backend_options={"use_uvloop": True})
    print(summary("bare jupyter_client comm_msg -> observe -> IOPub update (peer)", bare))
    print(summary("runtimed SendComm -> observe -> runtime document at client", ours))
    median = statistics.median(ours) / statistics.median(bare)
    print(f"ratio (median runtimed / median bare): {median:.2f}x")
    print(f"ratio (p99 runtimed / p99 bare): {percentile(ours, 99) / percentile(bare, 99):.2f}x")


if __name__ == "__main__":
    main()
