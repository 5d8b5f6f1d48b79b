"""The MLLP listener: HL7 v2 over TCP with Minimal Lower Layer Protocol framing (HL7 v2 Implementation Guide,
Transport Specification: MLLP release 2): each message is sent as <VT 0x0B> message <FS 0x1C><CR 0x0D> and
answered with its acknowledgement framed the same way, one message at a time on a connection.

Every frame gets an answer: the message's ACK (AA/AE/AR from `Hl7Service.handle`), or, for what is not a whole
frame - a new start block before the end of the last frame, a connection closed (or idle past the frame timeout)
in the middle of a frame, a frame larger than the limit, bytes outside any frame - an AR naming the problem, and
what arrived is kept in the dead-letter store. The database work runs in worker threads, never on the event loop.

Messages that arrive together on different connections are applied together (`Hl7Service.handle_many`): while one
batch is being applied the frames that come in wait, and then go as the next batch (at most MAX_BATCH), in one
database transaction with a savepoint per message, each still answered with its own ACK once its batch is committed.
A sender waits for its ACK before sending the next message (original acknowledgement mode), so a batch holds at most
one message per connection and each connection's messages are applied in the order sent. Right after a batch, the
connections it answered send their next messages within a millisecond or so: the next batch waits for them (at most
LINGER seconds, less as soon as every one of them has sent or closed) instead of starting with whichever came first
and leaving the rest for a batch of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from joinedup.care.notifications import service as notifications
from joinedup.interop.hl7.service import Hl7Service, Outcome

START, END, CR = b"\x0b", b"\x1c", b"\x0d"
MAX_BATCH = 64
LINGER = 0.004  # seconds the next batch waits for the connections the last one answered (see above)
log = logging.getLogger("joinedup.hl7")


def _answer(batch: list[tuple[str, bytes, asyncio.Future]], outs: list) -> None:
    for (_peer, _body, fut), out in zip(batch, outs):
        if not fut.done():
            fut.set_result(out)


def frame(message: str | bytes) -> bytes:
    """One MLLP frame."""
    body = message.encode("utf-8") if isinstance(message, str) else message
    return START + body + END + CR


class MllpServer:
    """An asyncio MLLP server in front of one `Hl7Service`."""

    def __init__(self, service: Hl7Service, *, host: str = "127.0.0.1", port: int = 2575,
                 max_bytes: int = 1_048_576, frame_timeout: float = 30.0, workers: int = 4,
                 on_outcome: Callable[[Outcome, float], None] | None = None) -> None:
        self.service = service
        self.host, self.port = host, port
        self.max_bytes = max_bytes
        self.frame_timeout = frame_timeout
        self.on_outcome = on_outcome
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="joinedup-hl7")
        self._server: asyncio.AbstractServer | None = None
        self._waiting: list[tuple[str, bytes, asyncio.Future]] = []  # frames for the next batch
        self._drainer: asyncio.Task | None = None
        self._carry: notifications.Ready | None = None  # a batch's notifications, for the next batch to write
        self._open: set[str] = set()  # connections open now (peer addresses)
        self._arrived: asyncio.Event | None = None  # set whenever a frame joins the waiting ones
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=1 << 16)
        sock = self._server.sockets[0].getsockname()
        self.bound = (sock[0], sock[1])

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._carry is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._settle)
        self._pool.shutdown(wait=True)

    async def _handle(self, peer: str, body: bytes, received: float) -> Outcome:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((peer, body, fut))
        if self._arrived is not None:
            self._arrived.set()
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        out = await fut
        if isinstance(out, BaseException):
            raise out
        if self.on_outcome:
            self.on_outcome(out, received)
        return out

    async def _drain(self) -> None:
        """Apply the waiting frames, batch after batch, one batch at a time (in a worker thread)."""
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        expected: set[str] = set()  # connections answered by the last batch: their next frames are on the way
        try:
            while True:
                deadline = loop.time() + LINGER
                while expected and len(self._waiting) < MAX_BATCH:
                    missing = (expected & self._open) - {peer for peer, _b, _f in self._waiting}
                    left = deadline - loop.time()
                    if not missing or left <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), left)
                    except TimeoutError:
                        break
                if not self._waiting:
                    if self._carry is not None:  # nothing to write them with: on their own (frames may come meanwhile)
                        await loop.run_in_executor(self._pool, self._settle)
                        continue
                    break
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                expected = {peer for peer, _body, _fut in batch}
                items = [(body, f"mllp:{peer}") for peer, body, _fut in batch]
                await loop.run_in_executor(self._pool, self._apply, loop, batch, items)
        finally:
            self._drainer = None

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted by another process (the dispatching listener of `hl7 listen --processes`)."""
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        except OSError:
            sock.close()
            return
        await self._client(reader, writer)

    def _apply(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[str, bytes, asyncio.Future]],
               items: list[tuple[bytes, str]]) -> None:
        """Apply one batch (in a worker thread) with the inbox items of the batch before, have its acknowledgements
        sent, and keep its own notifications for the next batch (`Notifier.holding`, `notifications.Ready`)."""
        notifier = notifications.notifier_for(self.service.gate)
        held = notifier.holding() if notifier is not None else None
        carry, self._carry = self._carry, None  # the last batch's notifications: written with this batch
        try:
            with held if held is not None else contextlib.nullcontext():
                outs: list = self.service.handle_many(items, also=carry)
        except Exception as exc:  # noqa: BLE001 - told to every connection of the batch
            outs = [exc] * len(batch)
        loop.call_soon_threadsafe(_answer, batch, outs)
        if carry is not None:
            carry.finish()  # its rest-hooks; or, not written with this batch, delivered now on its own
        if held is not None:
            self._carry = held.ready()

    def _settle(self) -> None:
        """No batch follows: the last batch's notifications are delivered on their own."""
        carry, self._carry = self._carry, None
        if carry is not None:
            carry.finish()

    async def _hold(self, peer: str, body: bytes, reason: str) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self.service.hold_unreadable(body, reason, channel=f"mllp:{peer}"))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        buf = bytearray()
        in_frame = False
        loop = asyncio.get_running_loop()
        self._open.add(peer)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(1 << 16), self.frame_timeout if in_frame else None)
                except TimeoutError:
                    out = await self._hold(peer, bytes(buf), f"MLLP frame truncated: no end block (0x1C 0x0D) within "
                                                             f"{self.frame_timeout:g} s; the partial message is kept")
                    writer.write(frame(out.ack))
                    await writer.drain()
                    buf.clear()
                    in_frame = False
                    continue
                if not chunk:
                    if in_frame and buf:
                        out = await self._hold(peer, bytes(buf), "MLLP frame truncated: the connection closed before "
                                                                 "the end block (0x1C 0x0D); the partial message is "
                                                                 "kept")
                        writer.write(frame(out.ack))
                        await writer.drain()
                    break
                data = bytes(chunk)
                while data:
                    if not in_frame:
                        start = data.find(START)
                        junk = data if start < 0 else data[:start]
                        if junk.strip(b"\r\n\t \x00\x1c"):
                            out = await self._hold(peer, junk, "bytes outside an MLLP frame (no start block 0x0B); "
                                                               "they are kept")
                            writer.write(frame(out.ack))
                            await writer.drain()
                        if start < 0:
                            break
                        data = data[start + 1:]
                        in_frame = True
                        buf.clear()
                    end = data.find(END + CR)
                    restart = data.find(START)
                    if restart >= 0 and (end < 0 or restart < end):
                        buf += data[:restart]
                        out = await self._hold(peer, bytes(buf), "MLLP frame truncated: a new start block (0x0B) "
                                                                 "arrived before the end block (0x1C 0x0D); the "
                                                                 "partial message is kept")
                        writer.write(frame(out.ack))
                        await writer.drain()
                        buf.clear()
                        data = data[restart + 1:]
                        continue
                    if end < 0:
                        buf += data
                        data = b""
                        if len(buf) > self.max_bytes:
                            out = await self._hold(peer, bytes(buf[: self.max_bytes]),
                                                   f"MLLP frame larger than {self.max_bytes} bytes: refused, the "
                                                   "first part is kept; the connection is closed")
                            writer.write(frame(out.ack))
                            await writer.drain()
                            return
                        break
                    buf += data[:end]
                    data = data[end + 2:]
                    in_frame = False
                    received = loop.time()
                    if len(buf) > self.max_bytes:
                        out = await self._hold(peer, bytes(buf[: self.max_bytes]),
                                               f"MLLP frame larger than {self.max_bytes} bytes: refused, the first "
                                               "part is kept")
                    else:
                        out = await self._handle(peer, bytes(buf), received)
                    buf.clear()
                    writer.write(frame(out.ack))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not stop the listener
            log.exception("MLLP connection %s failed", peer)
        finally:
            self._open.discard(peer)
            if self._arrived is not None:
                self._arrived.set()  # a batch waiting for this connection's next frame need not wait any longer
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def run(service: Hl7Service, *, host: str, port: int, max_bytes: int, frame_timeout: float,
        ready: Callable[[tuple[str, int]], None] | None = None, hand_to: list[socket.socket] | None = None,
        handed_from: socket.socket | None = None) -> None:
    """Serve until interrupted (`joinedup hl7 listen`; `joinedup serve` runs it in a thread: `start_in_thread`).

    With `hand_to` (the other listener processes of `hl7 listen --processes N` or of serve's JOINEDUP_HL7_PROCESSES,
    a Unix socket to each: `start_processes`),
    this process accepts every connection and deals them out in turn - itself included - passing the connection
    itself (SCM_RIGHTS), so each process serves the same share of the connections and a connection's messages are still
    applied in order by one process. With `handed_from`, this process listens on no port and serves the connections
    handed to it there, until that socket closes (the dispatching process has ended)."""

    async def main() -> None:
        server = MllpServer(service, host=host, port=port, max_bytes=max_bytes, frame_timeout=frame_timeout)
        try:
            if handed_from is not None:
                await _serve_handed(server, handed_from)
            elif hand_to:
                await _deal_out(server, host, port, hand_to, ready)
            else:
                await server.start()
                if ready and server.bound:
                    ready(server.bound)
                await server.serve_forever()
        finally:
            await server.close()

    # uvloop (installed with uvicorn[standard], as the web server runs on it): the listener's framing, reads and
    # acknowledgements cost about half what they do on the pure-Python loop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def _deal_out(server: MllpServer, host: str, port: int, others: list[socket.socket],
                    ready: Callable[[tuple[str, int]], None] | None) -> None:
    """Accept every connection and give each, in turn, to this process or to one of the others."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server((host, port), backlog=128)
    listener.setblocking(False)
    bound = listener.getsockname()
    server.bound = (bound[0], bound[1])
    if ready:
        ready(server.bound)
    targets: list[socket.socket | None] = [None, *others]
    tasks: set[asyncio.Task] = set()
    turn = 0
    try:
        while True:
            conn, _addr = await loop.sock_accept(listener)
            while True:
                target = targets[turn % len(targets)]
                turn += 1
                if target is None:
                    task = asyncio.ensure_future(server.adopt(conn))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    break
                try:
                    socket.send_fds(target, [b"c"], [conn.fileno()])
                    conn.close()  # the other process holds it now
                    break
                except OSError:  # that process has gone: the others (this one at least) serve its share
                    log.warning("an HL7 listener process has gone; its share of new connections goes to the others")
                    targets.remove(target)
                    target.close()
    finally:
        listener.close()


async def _serve_handed(server: MllpServer, source: socket.socket) -> None:
    """Serve the connections handed over on `source` until it closes."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    done = asyncio.Event()

    def receive() -> None:  # blocking reads of the handed connections, on a thread of their own
        while True:
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(source, 16, 8)
            except OSError:
                fds = []
            if not fds:
                loop.call_soon_threadsafe(done.set)
                return
            for fd in fds:
                loop.call_soon_threadsafe(serve, socket.socket(fileno=fd))

    def serve(sock: socket.socket) -> None:
        task = loop.create_task(server.adopt(sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    threading.Thread(target=receive, name="joinedup-mllp-handed", daemon=True).start()
    await done.wait()


def handing() -> tuple[socket.socket, socket.socket]:
    """A pair of connected Unix sockets to hand connections over (one message, with its connection, at a time)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def start_processes(n: int, *, host: str, port: int) -> tuple[list[socket.socket], list[subprocess.Popen]]:
    """Start `n` more listener processes (`joinedup hl7 listen --handed`), each serving the connections handed to
    it over a Unix socket of its own; returns this process's ends of those sockets (for `run(hand_to=...)`) and the
    processes. Each ends when the thread that started it does (the parent-death signal), or when its socket
    closes."""
    hand_to, procs = [], []
    for _ in range(n):
        mine, theirs = handing()
        procs.append(subprocess.Popen([sys.executable, "-m", "joinedup.cli", "hl7", "listen", "--host", host,
                                       "--port", str(port), "--handed", str(theirs.fileno())],
                                      stdout=subprocess.DEVNULL, pass_fds=[theirs.fileno()]))
        theirs.close()
        hand_to.append(mine)
    return hand_to, procs


def start_in_thread(service: Hl7Service, *, host: str, port: int, max_bytes: int, frame_timeout: float,
                    hand_to: list[socket.socket] | None = None) -> tuple[threading.Thread, tuple[str, int]]:
    """Start a listener on its own event loop in a daemon thread (beside the web server in `joinedup serve`);
    returns once it is listening, with the address it is bound to. With `hand_to`, it deals the connections out
    to those processes and itself in turn (see `run`)."""
    bound: list[tuple[str, int]] = []
    failed: list[BaseException] = []
    ready = threading.Event()

    def target() -> None:
        try:
            run(service, host=host, port=port, max_bytes=max_bytes, frame_timeout=frame_timeout, hand_to=hand_to,
                ready=lambda addr: (bound.append(addr), ready.set()))
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failed.append(exc)
            ready.set()

    t = threading.Thread(target=target, name="joinedup-mllp", daemon=True)
    t.start()
    ready.wait(30)
    if failed:
        raise failed[0]
    if not bound:
        raise TimeoutError(f"the MLLP listener did not start on {host}:{port}")
    return t, bound[0]
