"""A Redis Sentinel group on loopback (a primary, its replicas, sentinels), for failover tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import redis
from redis.exceptions import RedisError

from paylinks.devtools.redis_server import RedisServer, redis_server_binary

T = TypeVar("T")


class SentinelServer(RedisServer):
    """One sentinel watching `master`; it rewrites its own configuration file as it learns."""

    def __init__(
        self,
        master: str,
        primary_port: int,
        *,
        quorum: int,
        down_after_ms: int,
        password: str,
        own_password: str,
    ) -> None:
        super().__init__()
        self.settings = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.folder}",
            f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
            # Short, so that a test's failover takes seconds: a primary is down after this
            # long without an answer, and a failover that stalls is tried again after twice
            # the failover timeout.
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} {down_after_ms * 3}",
        ]
        if password:
            self.settings.append(f"sentinel auth-pass {master} {password}")
        if own_password:
            # Asked of clients, and given to the other sentinels.
            self.settings += [
                f"requirepass {own_password}",
                f"sentinel sentinel-pass {own_password}",
            ]

    def command(self) -> list[str]:
        conf = self.folder / "sentinel.conf"
        conf.write_text("\n".join(self.settings) + "\n")
        return [redis_server_binary(), str(conf), "--sentinel"]


class SentinelGroup:
    """A primary, `replicas` replicas and `sentinels` sentinels, every one a real process on a
    free loopback port. With `password`, the servers require it (and use it between them);
    with `sentinel_password`, the sentinels require theirs."""

    def __init__(
        self,
        *,
        master: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        password: str = "",
        sentinel_password: str = "",
    ) -> None:
        self.master = master
        self.password = password
        self.sentinel_password = sentinel_password
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.primary = RedisServer(options=auth)
        self.replicas = [
            RedisServer(options=[*auth, "--replicaof", "127.0.0.1", str(self.primary.port)])
            for _ in range(replicas)
        ]
        self.sentinels = [
            SentinelServer(
                master,
                self.primary.port,
                quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms,
                password=password,
                own_password=sentinel_password,
            )
            for _ in range(sentinels)
        ]

    @property
    def sentinel_addresses(self) -> str:
        """PAYLINKS_REDIS_SENTINELS for this group."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def start(self, timeout: float = 20) -> SentinelGroup:
        for server in self.servers:
            server.start()
        # A sentinel learns of replicas from the primary, and of other sentinels from their
        # greetings on it: ready once each one knows the whole group.
        self._until(lambda: all(self._linked(r) for r in self.replicas), "replicas linked", timeout)
        for sentinel in self.sentinels:
            sentinel.start()
        self._until(self._known_to_all, "sentinels know the group", timeout)
        return self

    def primary_port(self) -> int:
        """The primary's port, as a majority of the sentinels name it."""
        named = [self._named_by(s) for s in self.sentinels]
        for port in set(named):
            if port is not None and named.count(port) > len(self.sentinels) // 2:
                return port
        raise RuntimeError(f"the sentinels do not agree on a primary: {named}")

    def wait_for_failover(self, old_port: int, timeout: float = 30) -> int:
        """The new primary's port once every sentinel names one other than `old_port`, and it
        answers as a primary."""

        def promoted() -> int | None:
            named = {self._named_by(s) for s in self.sentinels}
            if len(named) != 1 or old_port in named or None in named:
                return None
            port = named.pop()
            assert port is not None
            return port if self._role(port) == "master" else None

        return self._until(promoted, "a replica promoted", timeout)

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()

    def _client(self, port: int, password: str | None = None) -> redis.Redis:
        return redis.Redis(
            port=port, password=password or None, socket_timeout=1, socket_connect_timeout=1
        )

    def _linked(self, replica: RedisServer) -> bool:
        with self._client(replica.port, self.password) as client:
            info = client.info("replication")
        return bool(info.get("master_link_status") == "up")

    def _known_to_all(self) -> bool:
        for sentinel in self.sentinels:
            with self._client(sentinel.port, self.sentinel_password) as client:
                state = client.sentinel_master(self.master)
            known_replicas = int(state["num-slaves"])
            others = int(state["num-other-sentinels"])
            if known_replicas != len(self.replicas) or others != len(self.sentinels) - 1:
                return False
        return True

    def _named_by(self, sentinel: SentinelServer) -> int | None:
        try:
            with self._client(sentinel.port, self.sentinel_password) as client:
                named = client.sentinel_get_master_addr_by_name(self.master)
        except RedisError:
            return None
        return int(named[1]) if named else None

    def _role(self, port: int) -> str | None:
        try:
            with self._client(port, self.password) as client:
                role = client.execute_command("ROLE")
        except RedisError:
            return None
        return str(role[0].decode() if isinstance(role[0], bytes) else role[0])

    @staticmethod
    def _until(reached: Callable[[], T | None], what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = reached()
            except RedisError:
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise RuntimeError(f"{what}: not within {timeout:g} s")

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
