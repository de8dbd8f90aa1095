"""The worker's script calls, pipelined: those its jobs make in one turn of the event loop go to
Redis in one write, on one connection, and their replies come back in order."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Seconds a call waits for its reply before its connection is given up: no script of ours runs
# for more than a millisecond, so only a connection that died without a word keeps a reply
# away this long.
REPLY_TIMEOUT = 10.0


class ReplyLostError(RedisError):
    """A call was sent but its reply never came (none in REPLY_TIMEOUT, or the pipeline was
    closed meanwhile). It may have run, so it is not sent again: not being a ConnectionError,
    redis-py's `Retry` leaves it to the caller (a job reads its record again on its next run).
    """


class AutoPipeline:
    """Commands from many jobs, on one connection: a command made while others wait for the
    loop's next turn is sent with them, in one write, and Redis reads them in one read. One
    round trip each would cost a write, a read and a wake-up on both sides per command: on
    the throughput bench, a quarter of the worker's CPU and of Redis' (the README's *Two
    script calls a request*). This is what ioredis calls auto-pipelining; redis-py has none.

    Errors are as redis-py's client gives them: an error reply goes to its own call only; a
    lost connection fails every call waiting on it, and each is retried on a new connection
    by the client's own `Retry` (a restart is ridden out as before). A call cancelled before
    its turn came is not sent. A connection idle for longer than the client's health-check
    interval is replaced before it is used again, where redis-py would PING it first.
    """

    def __init__(self, redis: Redis, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.redis = redis
        self.reply_timeout = reply_timeout
        self._retry: Retry = redis.get_retry() or Retry(NoBackoff(), 0)
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    def register_script(self, source: str) -> PipelinedScript:
        """A Lua script called through this pipeline, as `Redis.register_script` gives one."""
        return PipelinedScript(self, self.redis.register_script(source))

    async def execute(self, *args: Any) -> Any:
        """Send one command with those of this turn; its reply, decoded as the client's are."""
        return await self._retry.call_with_retry(
            lambda: self._execute(args), lambda error: self._forget(error)
        )

    async def aclose(self) -> None:
        """Close the connection; calls still waiting get ReplyLostError, later ones an error."""
        self._closed = True
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def _execute(self, args: Sequence[Any]) -> Any:
        link = self._link
        if link is None or not link.usable():
            link = await self._connect()
        return await link.send(args)

    async def _connect(self) -> _Link:
        async with self._connecting:
            if self._closed:
                raise RedisError("the pipeline is closed")
            link = self._link
            if link is None or not link.usable():
                if link is not None and not link.failed:
                    # Idle for too long, with no call waiting on it.
                    await link.close()
                connection = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                try:
                    await connection.connect()
                except BaseException:
                    await connection.disconnect(nowait=True)
                    raise
                link = self._link = _Link(connection, self.reply_timeout)
            return link

    async def _forget(self, error: Exception) -> None:
        # The link that failed has closed itself: the next try makes a new one.
        if self._link is not None and self._link.failed:
            self._link = None


class PipelinedScript:
    """redis-py's script, called by its SHA through an AutoPipeline. When Redis has lost it (a
    restart without persistence, SCRIPT FLUSH), that call did not run, and goes as redis-py's
    own, which loads the script first."""

    def __init__(self, pipeline: AutoPipeline, script: AsyncScript) -> None:
        self.pipeline = pipeline
        self.script = script

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.pipeline.execute("EVALSHA", self.script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.script(keys=keys, args=args)


class _Link:
    """One connection and the calls on it: those of a turn written together at its end, and
    their replies read in that order by the connection's reader. Once failed, never used again.
    """

    def __init__(self, connection: AbstractConnection, reply_timeout: float) -> None:
        self.connection = connection
        self.reply_timeout = reply_timeout
        self.failed = False
        self._loop = asyncio.get_running_loop()
        self._unsent: list[tuple[list[bytes], asyncio.Future[Any]]] = []
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._written = asyncio.Event()
        self._idle_since = self._loop.time()
        # What the calls still waiting get when the reader stops.
        self._error: RedisError = ConnectionError("the connection was lost")
        # A context of its own: not the one of the job whose call started it.
        self._reader = self._loop.create_task(self._read(), context=contextvars.Context())

    def usable(self) -> bool:
        if self.failed:
            return False
        interval = self.connection.health_check_interval
        idle = self._loop.time() - self._idle_since
        return bool(self._unsent or self._waiting) or not interval or idle < interval

    async def send(self, args: Sequence[Any]) -> Any:
        packed = self.connection.pack_command(*args)
        if not self._unsent:
            self._loop.call_soon(self._write)
        reply = self._loop.create_future()
        self._unsent.append((packed, reply))
        return await reply

    def _write(self) -> None:
        # A call cancelled before its turn came is not sent, as redis-py would not send it.
        calls = [(packed, reply) for packed, reply in self._unsent if not reply.done()]
        self._unsent = []
        if not calls:
            return
        try:
            writer = self.connection._writer
            if self.failed or writer is None:
                raise ConnectionError("the connection was lost")
            # Written at once and never drained: what waits to go out is bounded by the jobs
            # in flight, a call each.
            writer.writelines([chunk for packed, _ in calls for chunk in packed])
        except Exception as error:
            # A callback of the loop: raised from here, it would leave the callers waiting.
            # Never sent, so each may be retried.
            for _, reply in calls:
                reply.set_exception(ConnectionError(f"the call did not go out: {error}"))
            self._stop(ConnectionError(f"the connection failed: {error}"))
            return
        self._waiting.extend(reply for _, reply in calls)
        self._written.set()

    async def _read(self) -> None:
        try:
            while True:
                while not self._waiting:
                    self._idle_since = self._loop.time()
                    self._written.clear()
                    await self._written.wait()
                try:
                    async with asyncio.timeout(self.reply_timeout):
                        reply = await self.connection.read_response(disconnect_on_error=False)
                except ResponseError as error:
                    reply = error
                waiting = self._waiting.popleft()
                # A caller cancelled meanwhile has no one to take its reply.
                if waiting.done():
                    continue
                if isinstance(reply, ResponseError):
                    waiting.set_exception(reply)
                else:
                    waiting.set_result(reply)
        except (TimeoutError, RedisTimeoutError):
            # Ours, or redis-py's when REDIS_URL sets a socket timeout.
            self._error = ReplyLostError("no reply from Redis in time: the call may have run")
        except Exception as error:
            # redis-py's own errors included (a reply it cannot parse, a Sentinel's demoted
            # primary): the connection is not to be trusted.
            self._error = ConnectionError(f"the connection failed: {error}")
        finally:
            self.failed = True
            while self._waiting:
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_exception(self._error)
            await self.connection.disconnect(nowait=True)

    def _stop(self, error: RedisError) -> None:
        """Fail the link, unless it failed already: the calls waiting on it get `error`, and
        its reader stops (closing the connection)."""
        if not self.failed:
            self.failed = True
            self._error = error
            self._reader.cancel()

    async def close(self) -> None:
        for _, reply in self._unsent:
            if not reply.done():
                reply.set_exception(RedisError("the pipeline is closed"))
        self._unsent = []
        self._stop(ReplyLostError("the pipeline was closed before the reply came"))
        # Waited for without taking its cancellation as this caller's own.
        await asyncio.wait([self._reader])
