"""Docker backend of the test harness (testcontainers).

Selected explicitly: ``SA_PGDISPATCH_TEST_BACKEND=docker`` or the pytest option
``--pgdispatch-backend=docker``. The image is ``$SA_PGDISPATCH_TEST_IMAGE`` when set;
it must follow the official ``postgres`` image's contract (``POSTGRES_USER``,
``POSTGRES_PASSWORD``, ``POSTGRES_DB``; extra arguments go to ``postgres``) and have
pg_cron installed. Otherwise the harness builds (once, then reuses) a small image
from ``docker/Dockerfile``: ``postgres:15-bookworm`` plus ``postgresql-15-cron``.

When no Docker engine answers, :class:`~sa_pgdispatch.testing.errors.BackendUnavailable`
is raised (the pytest plugin turns it into a skip).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sa_pgdispatch.testing.connect import ConninfoMixin
from sa_pgdispatch.testing.errors import BackendUnavailable, HarnessError
from sa_pgdispatch.testing.pg_cron import check_pg_cron

__all__ = ["DEFAULT_IMAGE", "ENV_TEST_IMAGE", "DockerPostgres", "docker_engine_status"]

#: Environment variable naming the image to run instead of the default one.
ENV_TEST_IMAGE = "SA_PGDISPATCH_TEST_IMAGE"
#: Tag of the image built from ``docker/Dockerfile`` when no image is given.
DEFAULT_IMAGE = "sa-pgdispatch/postgres-cron:15"

_DOCKERFILE_DIR = Path(__file__).resolve().parent / "docker"
_CONTAINER_PORT = 5432


def docker_engine_status() -> str | None:
    """``None`` when a Docker engine answers a ping, else why not."""
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means: no usable engine
        return f"{type(exc).__name__}: {exc}"
    return None


def _ensure_default_image() -> str:
    import docker
    import docker.errors

    client = docker.from_env()
    try:
        try:
            client.images.get(DEFAULT_IMAGE)
        except docker.errors.ImageNotFound:
            client.images.build(path=str(_DOCKERFILE_DIR), tag=DEFAULT_IMAGE, rm=True)
    finally:
        client.close()
    return DEFAULT_IMAGE


def _postgres_container_class() -> Any:
    try:  # newer testcontainers moved the module; the old path warns
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError as exc:
            raise BackendUnavailable(
                "the docker backend needs testcontainers: pip install 'sa_pgdispatch[test]'"
            ) from exc
    return PostgresContainer


class DockerPostgres(ConninfoMixin):
    """PostgreSQL with pg_cron in a Docker container; ``start()``/``cleanup()``.

    Exposes the same attributes as the other backends (:class:`~.connect.PgServer`).
    The server cannot be stopped and started again; use the ephemeral backend for
    lifecycle tests.
    """

    def __init__(
        self,
        *,
        dbname: str = "pgdispatch",
        image: str | None = None,
        settings: Mapping[str, str] | None = None,
        durable: bool = False,
    ) -> None:
        self._dbname = dbname
        self._image = image or os.environ.get(ENV_TEST_IMAGE) or None
        self._settings = dict(settings or {})
        self.durable = durable
        self._password = secrets.token_hex(12)
        self._container: Any = None
        self._host = ""
        self._port = 0

    @property
    def image(self) -> str:
        return self._image or DEFAULT_IMAGE

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def dbname(self) -> str:
        return self._dbname

    @property
    def superuser(self) -> str:
        return "postgres"

    def _params(self) -> dict[str, str]:
        if self._container is None:
            raise HarnessError("the container has not been started")
        return {
            "user": "postgres",
            "password": self._password,
            "dbname": self._dbname,
            "host": self._host,
            "port": str(self._port),
        }

    def _command(self) -> list[str]:
        config = {
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": self._dbname,
            # pg_cron's libpq connections go through the local socket (trusted there).
            "cron.host": "/var/run/postgresql",
            "max_connections": "100",
            "log_min_messages": "warning",
        }
        if not self.durable:
            config.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        config.update(self._settings)
        command = ["postgres"]
        for key, value in config.items():
            command += ["-c", f"{key}={value}"]
        return command

    def start(self) -> DockerPostgres:
        if self._container is not None:
            return self
        why = docker_engine_status()
        if why is not None:
            raise BackendUnavailable(
                f"the docker backend needs a Docker engine and none answers ({why}). "
                "Start one (or set DOCKER_HOST), or use the default ephemeral backend."
            )
        postgres_container = _postgres_container_class()
        image = self._image or _ensure_default_image()
        container = postgres_container(
            image,
            username="postgres",
            password=self._password,
            dbname=self._dbname,
            driver="psycopg",
        )
        container.with_command(self._command())
        container.start()
        self._container = container
        try:
            self._host = container.get_container_host_ip()
            self._port = int(container.get_exposed_port(_CONTAINER_PORT))
            check_pg_cron(self.dsn, create=True)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    def __enter__(self) -> DockerPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"DockerPostgres(image={self.image!r}, host={self._host!r}, port={self._port})"
