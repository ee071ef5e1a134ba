"""A loopback TCP proxy in front of a gRPC server that a test can break: ``cut()``
drops every connection and refuses new ones until ``restore()``;
``drop_next_reply()`` lets the next request through and drops the connection when
the answer comes back (the write happened, the caller never hears of it)."""

from __future__ import annotations

import contextlib
import socket
import threading


class BreakableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._refusing = False
        self._drop_reply = False
        self._closed = False
        #: Connections dropped on purpose so far.
        self.drops = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            sockets = list(self._sockets)
            self._sockets.clear()
            self.drops += len(sockets) // 2
        for sock in sockets:
            _abort(sock)

    def restore(self) -> None:
        with self._lock:
            self._refusing = False

    def drop_next_reply(self) -> None:
        with self._lock:
            self._drop_reply = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self._take_drop(len(data)):
                    with self._lock:
                        self.drops += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(target)
            _abort(source)
            _abort(target)

    def _take_drop(self, size: int) -> bool:
        # HTTP/2 control frames (settings, window updates, pings) are small; an
        # answer with a message body is larger.
        with self._lock:
            if self._drop_reply and size > 40:
                self._drop_reply = False
                return True
            return False


def _abort(sock: socket.socket) -> None:
    # shutdown() first: it wakes the thread blocked in recv() on this socket, which
    # close() alone would not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
