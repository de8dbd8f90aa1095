"""The clients paylinks makes: redis-py's asyncio connections, packing commands in C and
checking a pooled connection without reading its socket, and still telling a dirty or closed
one from a clean one."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.connection import arq_pool, connect, settings_for


async def pooled(client: Redis) -> Connection:
    """The one connection a client that ran one command keeps in its pool."""
    await client.ping()
    (connection,) = client.connection_pool._available_connections  # type: ignore[attr-defined]
    assert isinstance(connection, Connection)
    return connection


def test_commands_are_packed_as_redis_py_packs_them(redis_server: RedisServer) -> None:
    ours = connect(redis_server.url).connection_pool.make_connection()
    theirs = Connection()
    arguments = ("EVALSHA", "sha", 2, "k", b"v", "é", 1.5, 100000.0, float("-inf"), 10**20, "")
    assert b"".join(ours.pack_command(*arguments)) == b"".join(theirs.pack_command(*arguments))
    with pytest.raises(Exception, match=r"str, int, float or bytes") as refused:
        ours.pack_command("SET", "k", True)
    assert type(refused.value).__name__ == "DataError", "refused as redis-py refuses it"


async def test_a_clean_pooled_connection_is_reused_and_a_dirty_one_is_noticed(
    redis_server: RedisServer,
) -> None:
    for client in (connect(redis_server.url), arq_pool(settings_for(redis_server.url))):
        try:
            connection = await pooled(client)
            assert not await connection.can_read_destructive()
            before = await client.client_id()
            # A reply no one read: the next command would take it for its own.
            await connection.send_command("PING")
            await asyncio.sleep(0.1)
            assert await connection.can_read_destructive()
            after = await client.client_id()
            assert isinstance(after, int), f"the stale reply was read as the answer: {after!r}"
            assert after != before, "the dirty connection was made anew"
        finally:
            await client.aclose()


async def test_a_pooled_connection_its_server_closed_is_noticed_before_a_command(
    redis_server: RedisServer, redis: Redis
) -> None:
    client = connect(redis_server.url)
    try:
        connection = await pooled(client)
        killed = await client.client_id()
        await redis.client_kill_filter(_id=killed)
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionError):
            await connection.can_read_destructive()
        # The pool reconnects it before sending, rather than sending into a closed socket.
        assert await client.client_id() != killed
    finally:
        await client.aclose()
