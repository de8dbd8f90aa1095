"""The worker's script calls, pipelined: those its jobs make in one turn of the event loop go to
Redis in one write, on one connection, and their replies come back in order."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Seconds a command waits for its reply before its connection is given up (and the command
# retried, as redis-py retries one): no script of ours runs for more than a millisecond, so
# only a connection that died without a word keeps a reply away this long.
REPLY_TIMEOUT = 10.0


class AutoPipeline:
    """Commands from many jobs, on one connection: a command made while others wait for the
    loop's next turn is sent with them, in one write, and Redis reads them in one read. One
    round trip each would cost a write, a read and a wake-up on both sides per command: on
    the throughput bench that was a fifth of the worker's CPU and of Redis' (the README's
    *Pipelined script calls*). This is what ioredis calls auto-pipelining; redis-py has none.

    Errors are as redis-py's client gives them: an error reply goes to its own command only;
    a lost connection fails every command waiting on it, and each is retried on a new
    connection by the client's own `Retry` (a restart is ridden out as before). A connection
    idle for longer than the client's health-check interval is replaced before it is used
    again, where redis-py would PING it first.
    """

    def __init__(self, redis: Redis, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.redis = redis
        self.reply_timeout = reply_timeout
        self._retry: Retry = redis.get_retry() or Retry(NoBackoff(), 0)
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()

    def register_script(self, source: str) -> PipelinedScript:
        """A Lua script called through this pipeline, as `Redis.register_script` gives one."""
        return PipelinedScript(self, source)

    async def execute(self, *args: Any) -> Any:
        """Send one command with those of this turn; its reply, decoded as the client's are."""
        return await self._retry.call_with_retry(
            lambda: self._execute(args), lambda error: self._forget(error)
        )

    async def aclose(self) -> None:
        if self._link is not None:
            await self._link.close(ConnectionError("the pipeline was closed"))
            self._link = None

    async def _execute(self, args: Sequence[Any]) -> Any:
        link = self._link
        if link is None or not link.usable():
            link = await self._connect()
        return await link.send(args)

    async def _connect(self) -> _Link:
        async with self._connecting:
            link = self._link
            if link is None or not link.usable():
                if link is not None:
                    await link.close(ConnectionError("the connection was idle for too long"))
                connection = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await connection.connect()
                link = self._link = _Link(connection, self.reply_timeout)
            return link

    async def _forget(self, error: Exception) -> None:
        # The link that failed has closed itself; a new one is made on the next try.
        if self._link is not None and self._link.failed:
            self._link = None


class PipelinedScript:
    """A Lua script, called by its SHA through an AutoPipeline; loaded again when Redis has
    lost it (a restart without persistence, SCRIPT FLUSH), as redis-py's scripts are."""

    def __init__(self, pipeline: AutoPipeline, source: str) -> None:
        self.pipeline = pipeline
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self.pipeline.execute(*command)
        except NoScriptError:
            await self.pipeline.execute("SCRIPT", "LOAD", self.source)
            return await self.pipeline.execute(*command)


class _Link:
    """One connection and the commands waiting on it: written once a turn, replies read in
    the order the commands went out, by one reader that runs while any command waits."""

    def __init__(self, connection: AbstractConnection, reply_timeout: float) -> None:
        self.connection = connection
        self.reply_timeout = reply_timeout
        self.failed = False
        self._unsent: list[bytes] = []
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._idle_since = self._loop.time()

    def usable(self) -> bool:
        if self.failed:
            return False
        interval = self.connection.health_check_interval
        return (
            bool(self._waiting) or not interval or self._loop.time() - self._idle_since < interval
        )

    async def send(self, args: Sequence[Any]) -> Any:
        packed = self.connection.pack_command(*args)
        if not self._unsent:
            self._loop.call_soon(self._write)
        self._unsent += packed
        reply = self._loop.create_future()
        self._waiting.append(reply)
        return await reply

    def _write(self) -> None:
        unsent, self._unsent = self._unsent, []
        writer = self.connection._writer
        try:
            if self.failed or writer is None:
                raise ConnectionError("the connection was lost")
            # Written at once and never drained: what waits to go out is bounded by the jobs
            # in flight, a command each.
            writer.writelines(unsent)
        except Exception as error:
            # A callback of the loop: raised here, it would leave the commands' callers waiting.
            self._fail(ConnectionError(f"the commands did not go out: {error}"))
            return
        if self._reader is None:
            self._reader = self._loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            while self._waiting:
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
        except asyncio.CancelledError:
            self._fail(ConnectionError("the pipeline was closed"))
            raise
        except TimeoutError:
            self._fail(RedisTimeoutError(f"no reply from Redis in {self.reply_timeout} s"))
        except (ConnectionError, OSError) as error:
            self._fail(ConnectionError(str(error)))
        finally:
            self._reader = None
            self._idle_since = self._loop.time()
        if self.failed:
            await self.connection.disconnect(nowait=True)

    def _fail(self, error: Exception) -> None:
        self.failed = True
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(error)

    async def close(self, error: Exception) -> None:
        self._fail(error)
        if self._reader is not None:
            self._reader.cancel()
        await self.connection.disconnect(nowait=True)
