"""Noticing that a client socket's peer went away: the talker killed (or restarted by systemd) while a
request is in flight. ZeroMQ reconnects a DEALER silently, and the new talker knows nothing of the old
requests, so without this a client waits for its whole timeout (25 s and more in docs/SOAK.md) before it
learns what happened. libzmq's socket monitor reports the disconnect at once.

    watch = PeerWatch(sock)     # after sock.connect(); one per socket
    watch.reset()               # just before sending a request: forget disconnects of earlier connections
    ...
    if watch.lost(): ...        # the connection the request went out on has dropped since reset()
    watch.close()               # before or after sock.close()

Works for sync and zmq.asyncio sockets alike: the monitor is read with a plain socket on the same libzmq
context (inproc:// needs the same context), always without blocking.
"""
from __future__ import annotations

import itertools

import zmq
from zmq.utils.monitor import parse_monitor_message

_ids = itertools.count()
# what a client is told when the talker went away under its request (error code not_running)
LOST = ("the talker daemon went away while it had this request (killed or restarting); the request is lost: "
        "send it again")


class PeerWatch:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        addr = f"inproc://qwen3-tts-peer-watch-{id(sock):x}-{next(_ids)}"
        sock.monitor(addr, zmq.EVENT_DISCONNECTED)
        self.mon = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        self.mon.setsockopt(zmq.LINGER, 0)
        self.mon.connect(addr)
        self._lost = False

    def _read(self) -> None:
        while True:
            try:
                ev = parse_monitor_message(self.mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed under us
                return
            if ev["event"] == zmq.EVENT_DISCONNECTED:
                self._lost = True

    def reset(self) -> None:
        self._read()
        self._lost = False

    def lost(self) -> bool:
        self._read()
        return self._lost

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:  # the socket is closed already
            pass
        self.mon.close(0)
