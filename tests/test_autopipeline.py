"""The worker's script calls, pipelined: the calls of one turn in one write, each reply to its
own caller, and a lost script, connection or server ridden out as redis-py rides them out."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.connection import connect
from paylinks.worker.autopipeline import REPLY_TIMEOUT, AutoPipeline, ReplyLostError

# Answers with its argument and a count, so that a reply given to the wrong caller shows.
ECHO = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
INCR = "return redis.call('INCR', KEYS[1])"
# Runs for about 50 ms: long enough to be cancelled while Redis still runs it.
WAIT = """
local t = redis.call('TIME')
repeat local u = redis.call('TIME') until (u[1] - t[1]) * 1000000 + (u[2] - t[2]) > 50000
"""
SLOW = WAIT + "return ARGV[1]"
SLOW_INCR = WAIT + "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def pipeline(redis: Redis) -> AsyncIterator[AutoPipeline]:
    pipelined = AutoPipeline(redis)
    yield pipelined
    await pipelined.aclose()


async def reads(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_the_calls_of_one_turn_go_in_one_write_and_each_caller_gets_its_own_reply(
    redis: Redis, pipeline: AutoPipeline
) -> None:
    echo = pipeline.register_script(ECHO)
    assert await echo(keys=["n"], args=["first"]) == ["first", 1]
    before = await reads(redis)
    replies = await asyncio.gather(*(echo(keys=["n"], args=[str(i)]) for i in range(200)))
    # One read for each INFO, and the 200 calls in a few: one write, read as it arrives.
    assert await reads(redis) - before <= 5
    assert [reply[0] for reply in replies] == [str(i) for i in range(200)]
    assert [reply[1] for reply in replies] == list(range(2, 202))


async def test_an_error_reply_goes_to_its_own_call_only(pipeline: AutoPipeline) -> None:
    echo = pipeline.register_script(ECHO)
    refuse = pipeline.register_script("return redis.error_reply('refused ' .. ARGV[1])")
    first, refused, last = await asyncio.gather(
        echo(keys=["n"], args=["a"]), refuse(args=["b"]), echo(keys=["n"], args=["c"]),
        return_exceptions=True,
    )  # fmt: skip
    assert first == ["a", 1]
    assert isinstance(refused, ResponseError)
    assert "refused b" in str(refused)
    assert last == ["c", 2]


async def test_a_script_redis_lost_is_loaded_again(redis: Redis, pipeline: AutoPipeline) -> None:
    echo = pipeline.register_script(ECHO)
    assert await echo(keys=["n"], args=["before"]) == ["before", 1]
    await redis.script_flush()
    assert await echo(keys=["n"], args=["after"]) == ["after", 2]


async def test_a_caller_cancelled_while_redis_runs_its_call_shifts_no_reply(
    pipeline: AutoPipeline,
) -> None:
    slow, echo = pipeline.register_script(SLOW), pipeline.register_script(ECHO)
    cancelled = asyncio.create_task(slow(args=["slow"]))
    await asyncio.sleep(0.01)  # written, and running in Redis
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    replies = await asyncio.gather(echo(keys=["n"], args=["a"]), echo(keys=["n"], args=["b"]))
    assert replies == [["a", 1], ["b", 2]]


async def test_a_connection_redis_closed_is_replaced_and_the_call_made_on_the_new_one(
    redis: Redis, pipeline: AutoPipeline
) -> None:
    echo = pipeline.register_script(ECHO)
    assert await echo(keys=["n"], args=["a"]) == ["a", 1]
    # Every connection but the test's own: the pipeline's too.
    await redis.client_kill_filter(_type="normal", skipme=True)
    assert await echo(keys=["n"], args=["b"]) == ["b", 2]


async def test_an_idle_connection_is_replaced_before_it_is_used_again(redis: Redis) -> None:
    client = Redis.from_url(
        os.environ["REDIS_URL"], decode_responses=True, health_check_interval=0.2
    )
    pipelined = AutoPipeline(client)
    try:
        echo = pipelined.register_script(ECHO)

        async def connections() -> int:
            return int((await redis.info("stats"))["total_connections_received"])

        await echo(keys=["n"], args=["a"])
        before = await connections()
        await echo(keys=["n"], args=["b"])
        assert await connections() == before, "a connection in use is kept"
        await asyncio.sleep(0.3)
        assert await echo(keys=["n"], args=["c"]) == ["c", 3]
        assert await connections() == before + 1
    finally:
        await pipelined.aclose()
        await client.aclose()


async def test_calls_made_while_redis_restarts_are_retried_until_it_is_back() -> None:
    with RedisServer() as server:
        client = connect(server.url)
        pipelined = AutoPipeline(client)
        try:
            echo = pipelined.register_script(ECHO)
            assert await echo(keys=["n"], args=["before"]) == ["before", 1]
            server.kill()  # SIGKILL: the scripts and the count go with it
            during = asyncio.gather(*(echo(keys=["n"], args=[str(i)]) for i in range(3)))
            await asyncio.sleep(0.5)
            server.start()
            assert await asyncio.wait_for(during, 30) == [["0", 1], ["1", 2], ["2", 3]]
        finally:
            await pipelined.aclose()
            await client.aclose()


@pytest.mark.parametrize(
    ("query", "reply_timeout"),
    [("", 0.5), ("?socket_timeout=0.3", REPLY_TIMEOUT)],
    ids=["reply timeout", "redis-py's socket timeout"],
)
async def test_a_call_whose_reply_never_came_fails_and_is_not_sent_again(
    query: str, reply_timeout: float
) -> None:
    with RedisServer() as server:
        # redis-py's retries on, as the worker's: the lost call must not use them.
        client = connect(server.url + query)
        pipelined = AutoPipeline(client, reply_timeout=reply_timeout)
        assert server.process is not None
        try:
            incr = pipelined.register_script(INCR)
            assert await incr(keys=["n"]) == 1
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(ReplyLostError):
                    await asyncio.wait_for(incr(keys=["n"]), 5)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            # It ran once Redis woke, and only once; the next call is on a new connection.
            assert await incr(keys=["n"]) == 3
        finally:
            await pipelined.aclose()
            await client.aclose()


async def test_a_call_cancelled_before_its_turn_came_is_not_sent(
    redis: Redis, pipeline: AutoPipeline
) -> None:
    incr = pipeline.register_script(INCR)
    assert await incr(keys=["n"]) == 1
    cancelled = asyncio.create_task(incr(keys=["n"]))
    await asyncio.sleep(0)  # queued for the turn's write, not written yet
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await incr(keys=["n"]) == 2


async def test_closing_fails_the_calls_waiting_without_sending_them_again(
    redis: Redis, pipeline: AutoPipeline
) -> None:
    slow = pipeline.register_script(SLOW_INCR)
    assert await slow(keys=["n"]) == 1
    connections = int((await redis.info("stats"))["total_connections_received"])
    waiting = asyncio.create_task(slow(keys=["n"]))
    await asyncio.sleep(0.01)  # written, and running in Redis
    await pipeline.aclose()
    with pytest.raises(ReplyLostError):
        await waiting
    with pytest.raises(RedisError, match="closed"):
        await slow(keys=["n"])
    await asyncio.sleep(0.1)
    assert await redis.get("n") == "2", "the call ran once, and was not sent again"
    assert int((await redis.info("stats"))["total_connections_received"]) == connections
