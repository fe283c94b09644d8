"""Liveness links between the processes of a run, so a lost process stops the others in one line.

JAX's own health check aborts the survivors with a C++ stack dump, and only after its heartbeat
timeout (100 s by default) when the lost process is not the coordinator. Here process 0 keeps a
TCP link to every other process (opened during the rendezvous of `distributed.py`), and each side
sends a byte every second. A process that is killed closes its end at once (its kernel does), so
the others see it within a second; one that is frozen or whose host is gone is given up after
`timeout_s` without a byte. The survivor then writes one line naming the lost process to stderr
(and process 0 tells the other processes which one it was) and exits with `EXIT_LOST`, leaving
its checkpoints as they are: the unfinished save in flight is never read. A process that finishes
cleanly says goodbye first (`leave`), so its closing link is not taken for a loss; one that stops
on an error it reported says so, and the others (which usually hit the same error) get
`ERROR_GRACE_S` to report theirs before they stop naming it.
"""

from __future__ import annotations

import os
import socket
import threading
import time

EXIT_LOST = 2
BEAT_S = 1.0
ERROR_GRACE_S = 10.0
_BEAT, _BYE, _ERROR, _LOST = b".", b"B", b"E", b"L"


class Watchdog:
    """The links of this process (to process 0, or from process 0 to each other process)."""

    def __init__(self, links: dict[int, socket.socket], process_id: int, num_processes: int, timeout_s: float):
        self.links, self.process_id, self.num_processes = links, process_id, num_processes
        self.timeout_s = timeout_s
        self.fired = threading.Event()
        self._leaving = threading.Event()
        self._lock = threading.Lock()
        self._stderr = os.dup(2)  # kept: fd 2 is silenced when the watchdog fires
        for peer, link in links.items():
            link.settimeout(timeout_s)
            threading.Thread(target=self._watch, args=(peer, link), name=f"gpt2_jax-watch-{peer}", daemon=True).start()
        threading.Thread(target=self._beat, name="gpt2_jax-beat", daemon=True).start()

    def _beat(self) -> None:
        while not self._leaving.is_set():
            for link in list(self.links.values()):
                try:
                    link.sendall(_BEAT)
                except OSError:
                    pass  # the watching thread reports the broken link
            self._leaving.wait(BEAT_S)

    def _watch(self, peer: int, link: socket.socket) -> None:
        pending = b""
        try:
            while True:
                data = link.recv(64)
                if not data:
                    raise EOFError
                pending += data.replace(_BEAT, b"")
                if _BYE in pending:
                    return  # a clean exit: its link closing next is no loss
                if _ERROR in pending:  # it reported an error: this process likely has the same one to report
                    time.sleep(ERROR_GRACE_S)
                    self._fail(f"process {peer} of {self.num_processes} stopped on an error (its log has it)", peer)
                    return
                if _LOST in pending and b"\n" in pending.split(_LOST, 1)[1]:
                    lost = pending.split(_LOST, 1)[1].split(b"\n", 1)[0].decode()
                    self._fail(f"lost process {lost} of {self.num_processes} (reported by process 0)")
        except socket.timeout:
            self._fail(f"lost process {peer} of {self.num_processes}: no heartbeat for {self.timeout_s:g} s "
                       "(frozen, or its host or network is down)", peer)
        except (OSError, EOFError):
            if not self._leaving.is_set():
                self._fail(f"lost process {peer} of {self.num_processes}: its connection closed (it exited, "
                           "crashed or was killed; its log says which)", peer)

    def _fail(self, what: str, peer: int | None = None) -> None:
        with self._lock:
            if self.fired.is_set() or self._leaving.is_set():
                return
            self.fired.set()
            for other, link in self.links.items():  # process 0 tells the rest which one was lost
                if other != peer and peer is not None:
                    try:
                        link.sendall(_LOST + f"{peer}\n".encode())
                    except OSError:
                        pass
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # the runtime's own reports of the same loss would only bury this line
            line = (f"gpt2-jax: error: {what}; process {self.process_id} stops too. Checkpoints are intact (a "
                    "save in flight is never read); start all processes again with the same command to resume "
                    "from the last one\n")
            os.write(self._stderr, line.encode())
            os._exit(EXIT_LOST)

    def leave(self, failed: bool = False) -> None:
        """Say goodbye on every link (`failed`: this process reported an error) and stop watching."""
        with self._lock:
            if self.fired.is_set():
                return
            self._leaving.set()
        for link in self.links.values():
            try:
                link.sendall(_ERROR if failed else _BYE)
                link.close()
            except OSError:
                pass

    def wait_for_verdict(self, seconds: float) -> None:
        """Block up to `seconds` while a failed collective's lost peer is noticed (then this process exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._leaving.is_set():
            if self.fired.wait(0.1):
                time.sleep(seconds)  # _fail is exiting the process


_ACTIVE: list[Watchdog] = []


def start(links: dict[int, socket.socket], process_id: int, num_processes: int, timeout_s: float) -> Watchdog:
    """Watch `links` ({peer process id: connected socket}) from now on."""
    dog = Watchdog(links, process_id, num_processes, timeout_s)
    _ACTIVE.append(dog)
    return dog


def leave(failed: bool = False) -> None:
    """This process exits (`failed`: on an error it reported): tell the others, so they do not take
    it for a loss."""
    while _ACTIVE:
        _ACTIVE.pop().leave(failed)


def defer(seconds: float = 3.0) -> None:
    """Called on an error that a lost process may explain: give the watchdog `seconds` to name it."""
    for dog in _ACTIVE:
        dog.wait_for_verdict(seconds)
