"""Real Redis servers for tests: a standalone server, a 3-master cluster, a password-protected server.

TLS: ``make_tls_files`` writes a throwaway CA and certificates with the ``openssl`` CLI, and
``RedisServer(..., tls=files)`` / ``start_cluster(..., tls=files)`` serve TLS only (``--port 0``).

Each server is a ``redis-server`` child process on a free loopback port, with its files in a tmp
dir, no persistence, and is killed (and waited for) at teardown. A missing ``redis-server`` fails
the test run; it is never a skip.

Use the fixtures by making them attributes of a test module::

    import redis_servers
    redis_cluster = redis_servers.redis_cluster

    def test_something(redis_cluster):
        db = Storage("volatile_db", {"type": "redis_cluster", "address": redis_cluster.address})
        redis_cluster.client.hlen("...")
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest
import redis
import redis.cluster

START_TIMEOUT_S = 10.0
CLUSTER_TIMEOUT_S = 30.0


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found on PATH: install the Debian package redis-server "
                           "(scripts/bootstrap.sh system does)")
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A loopback port nobody listens on (and, for a cluster node, its bus port + 10000 too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster_bus or (port + 10000 < 65536 and _port_is_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


@dataclass
class TlsFiles:
    """PEM files of a throwaway CA: server and client certificates it signed, and keys."""

    dir: str
    ca: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    server_name: str

    def redis_py_options(self, client_cert: bool = True) -> dict:
        options = {"ssl": True, "ssl_ca_certs": self.ca, "ssl_check_hostname": False}
        if client_cert:
            options.update(ssl_certfile=self.client_cert, ssl_keyfile=self.client_key)
        return options


def _openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run([_require("openssl"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def make_tls_files(folder: str, server_name: str = "redis.localhost", ca_name: str = "tf_hps test CA") -> TlsFiles:
    """A new CA (EC P-256) in ``folder``, a server certificate for ``server_name`` and 127.0.0.1,
    and a client certificate, both signed by it (valid 2 days)."""
    os.makedirs(folder, exist_ok=True)
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", "-new", *key_options, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    for name, subject, ext in [
            ("server", f"/CN={server_name}",
             f"subjectAltName=DNS:{server_name},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ("client", "/CN=tf_hps test client", "extendedKeyUsage=clientAuth\n")]:
        with open(os.path.join(folder, f"{name}.ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\n" + ext)
        _openssl("req", "-new", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    return TlsFiles(folder, path("ca.crt"), path("ca.key"), path("server.crt"), path("server.key"),
                    path("client.crt"), path("client.key"), server_name)


class RedisServer:
    """One ``redis-server`` process; ``stop()`` kills it and waits for it.

    With ``tls`` it listens for TLS only, on ``port`` (``--port 0 --tls-port``); ``tls_auth_clients``
    is Redis's ``tls-auth-clients`` (``yes``: a client certificate is required). A cluster node then
    also speaks TLS to its peers (``tls-cluster``, ``tls-replication``).
    """

    def __init__(self, root: str, *extra: str, cluster: bool = False, password: str | None = None,
                 port: int | None = None, tls: TlsFiles | None = None, tls_auth_clients: str = "yes"):
        self.port = port or free_port(cluster_bus=cluster)
        self.dir = os.path.join(root, f"redis-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.password = password
        self.tls = tls
        if tls is None:
            args = [_require("redis-server"), "--port", str(self.port)]
        else:
            args = [_require("redis-server"), "--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", tls.server_cert, "--tls-key-file", tls.server_key,
                    "--tls-ca-cert-file", tls.ca, "--tls-auth-clients", tls_auth_clients]
            if cluster:
                args += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        args += ["--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--logfile", os.path.join(self.dir, "redis.log")]
        if cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000"]
        if password is not None:
            args += ["--requirepass", password]
        args += list(extra)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tls_options = tls.redis_py_options() if tls is not None else {}
        self.client = redis.Redis(host="127.0.0.1", port=self.port, password=password, **tls_options)
        self._wait_until_up()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}: "
                                   f"{self.process.stderr.read().decode(errors='replace')}{self.log()}")
            try:
                if self.client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT_S} s")

    def log(self) -> str:
        path = os.path.join(self.dir, "redis.log")
        return open(path).read()[-2000:] if os.path.exists(path) else ""

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()


@dataclass
class RedisDeployment:
    """What a test gets: the ``volatile_db.address`` string, a redis-py client and the servers."""

    address: str
    client: redis.Redis | redis.cluster.RedisCluster
    servers: list[RedisServer] = field(default_factory=list)

    def stop(self) -> None:
        self.client.close()
        for server in self.servers:
            server.stop()


def start_standalone(root: str, password: str | None = None, *extra: str) -> RedisDeployment:
    server = RedisServer(root, *extra, password=password)
    return RedisDeployment(server.address, server.client, [server])


def start_cluster(root: str, masters: int = 3, tls: TlsFiles | None = None) -> RedisDeployment:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``, no replicas.

    With ``tls``, every node serves TLS only (clients and cluster bus), and redis-cli and the
    redis-py client connect with the test CA and client certificate."""
    servers: list[RedisServer] = []
    try:
        for _ in range(masters):
            servers.append(RedisServer(root, cluster=True, tls=tls))
        addresses = [s.address for s in servers]
        cli_tls = [] if tls is None else ["--tls", "--cacert", tls.ca, "--cert", tls.client_cert,
                                          "--key", tls.client_key]
        proc = subprocess.run([_require("redis-cli"), *cli_tls, "--cluster", "create", *addresses,
                               "--cluster-replicas", "0", "--cluster-yes"],
                              check=False, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{proc.stdout}\n{proc.stderr}")
        deadline = time.monotonic() + CLUSTER_TIMEOUT_S
        while not all(s.client.cluster("info")["cluster_state"] == "ok" for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        tls_options = tls.redis_py_options() if tls is not None else {}
        client = redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", s.port) for s in servers], **tls_options)
        return RedisDeployment(",".join(addresses), client, servers)
    except BaseException:
        for server in servers:
            server.stop()
        raise


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory):
    """A standalone (cluster support disabled) Redis server for the whole session."""
    deployment = start_standalone(str(tmp_path_factory.mktemp("redis_standalone")))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster (no replicas) for the whole session; ``address`` lists every master."""
    deployment = start_cluster(str(tmp_path_factory.mktemp("redis_cluster")))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_with_password(tmp_path_factory):
    """A standalone server with ``requirepass s3cret`` and an ACL user ``alice`` / ``alice-pw``."""
    deployment = start_standalone(str(tmp_path_factory.mktemp("redis_auth")), "s3cret",
                                  "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all")
    yield deployment
    deployment.stop()
