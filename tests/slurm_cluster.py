"""A real single-node SLURM cluster on localhost, with accounting (slurmdbd + MariaDB).

Everything lives in one temporary folder: configuration, state, logs, pid files, the munge
key and socket, and the MariaDB data directory. Ports are picked free, so the cluster does
not clash with a SLURM or a MariaDB already on the machine. It needs root (slurmd launches
jobs) and Debian's packages slurmctld slurmd slurm-client slurmdbd munge mariadb-server.

Clients see the cluster through `SLURM_CONF` (see `SlurmCluster.env`). From a shell:

    python tests/slurm_cluster.py start /tmp/bs-slurm    # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop /tmp/bs-slurm

Teardown cancels the jobs, stops the daemons by their pid files, and then ends every process
started with this cluster's `SLURM_CONF` in its environment (job steps included), by pid.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db")
CLIENTS = ("sbatch", "srun", "squeue", "sacct", "sacctmgr", "sinfo", "scancel", "munge", "mariadb",
           "mariadb-admin")  # fmt: skip
PARTITION = "batch"
ACCOUNT = "batchscale"
CLUSTER = "batchscale"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")  # munge's default
# Where a configless slurmd links its configuration for the commands run inside jobs
# (the SLURM executor plugin drops SLURM_CONF from the job step's environment).
CONFIGLESS_LINK = Path("/run/slurm/conf")
# In the environment of every daemon (and, through the env() clients get, every job).
MARKER = "BATCHSCALE_TEST_SLURM"
# The node declares at most 2 CPUs, fewer than the 4 the cluster profile's timing rules want,
# so that the tests meet a node smaller than the profile assumes on any machine.
NODE_CPUS = 2


def missing_binaries() -> list[str]:
    """The programs the cluster needs that are not installed (empty when it can start)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """Start, use and stop a one-node SLURM whose files all lie under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.etc = self.root / "etc"
        self.run = self.root / "run"
        self.log = self.root / "log"
        self.state = self.root / "state"
        self.conf = self.etc / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.cpus = min(NODE_CPUS, len(os.sched_getaffinity(0)))
        self.memory_mb = int(_memory_mb() * 0.8)
        self.partition = PARTITION
        self.account = ACCOUNT

    # -- what clients need -----------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env[MARKER] = str(self.root)  # finds the cluster's processes at teardown
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        return env

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                               + self.log_tails())  # fmt: skip
        return proc

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.log.glob("*.log")) if self.log.exists() else []:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- start -----------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> SlurmCluster:
        if os.geteuid() != 0:
            raise RuntimeError("a local SLURM needs root (slurmd starts jobs as their user)")
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"SLURM binaries missing: {', '.join(missing)}")
        for folder in (self.etc, self.run, self.log, self.state / "ctld", self.state / "d"):
            folder.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.ports = dict(zip(("ctld", "d", "dbd", "db"), _free_ports(4), strict=True))
        deadline = time.monotonic() + timeout
        try:
            self._start_munge()
            self._start_mariadb(deadline)
            self._write_conf()
            self._start_slurmdbd(deadline)
            self._add_associations()
            self.cmd("slurmctld", "-f", str(self.conf))
            # Configless, as on many clusters: jobs find the configuration without SLURM_CONF.
            env = {k: v for k, v in self.env().items() if k != "SLURM_CONF"}
            subprocess.run(["slurmd", "--conf-server", f"127.0.0.1:{self.ports['ctld']}"], env=env,
                           check=True, capture_output=True, text=True, timeout=60)  # fmt: skip
            node_state = ["sinfo", "-h", "-N", "-o", "%t"]
            idle = lambda: self.cmd(*node_state, check=False).stdout.strip() == "idle"  # noqa: E731
            self._wait(idle, deadline, "node idle")
        except BaseException:
            print(self.log_tails(), file=sys.stderr)
            self.stop()
            raise
        return self

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM test cluster: timed out waiting for {what}\n{self.log_tails()}")
            time.sleep(0.5)

    def _start_munge(self) -> None:
        """munged on its default socket, as on a cluster: slurmd fetches its configuration
        (configless) before it has read any AuthInfo. One already running there is used."""
        if subprocess.run(["munge", "-n"], capture_output=True, timeout=30).returncode == 0:
            return
        munge = self.root / "munge"
        munge.mkdir(exist_ok=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        MUNGE_SOCKET.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Root runs munged here (the daemons and the jobs run as root too); --force lets it.
        subprocess.run(
            ["munged", "--force", f"--key-file={key}", f"--socket={MUNGE_SOCKET}",
             f"--pid-file={self.run / 'munged.pid'}", f"--log-file={self.log / 'munged.log'}",
             f"--seed-file={munge / 'munged.seed'}"],
            env=self.env(), check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def _start_mariadb(self, deadline: float) -> None:
        data = self.state / "mysql"
        self.db_socket = self.run / "mysqld.sock"
        options = [
            "--no-defaults", f"--datadir={data}", "--user=root",
            "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=8M", "--innodb-lock-wait-timeout=900",
        ]  # fmt: skip
        subprocess.run(
            ["mariadb-install-db", *options, "--auth-root-authentication-method=socket", "--skip-test-db"],
            env=self.env(), check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        with open(self.log / "mariadb.log", "ab") as log:
            subprocess.Popen(
                ["mariadbd", *options, f"--socket={self.db_socket}", f"--port={self.ports['db']}",
                 "--bind-address=127.0.0.1", "--skip-name-resolve",
                 f"--pid-file={self.run / 'mariadbd.pid'}"],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        ping = ["mariadb-admin", "--no-defaults", f"--socket={self.db_socket}", "-u", "root", "ping"]
        self._wait(lambda: subprocess.run(ping, capture_output=True).returncode == 0, deadline, "MariaDB")
        sql = (
            "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        subprocess.run(["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-u", "root", "-e", sql],
                       check=True, capture_output=True, text=True, timeout=30)  # fmt: skip

    def _write_conf(self) -> None:
        auth = "AuthType=auth/munge\n"
        user = getpass.getuser()
        self.conf.write_text(
            f"""# A one-node test cluster (tests/slurm_cluster.py); every file lies under {self.root}.
ClusterName={CLUSTER}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ports["ctld"]}
SlurmdPort={self.ports["d"]}
SlurmUser={user}
SlurmdUser=root
SlurmctldParameters=enable_configless
{auth}CredType=cred/munge
StateSaveLocation={self.state / "ctld"}
SlurmdSpoolDir={self.state / "d"}
SlurmctldPidFile={self.run / "slurmctld.pid"}
SlurmdPidFile={self.run / "slurmd.pid"}
SlurmctldLogFile={self.log / "slurmctld.log"}
SlurmdLogFile={self.log / "slurmd.log"}
PlugStackConfig={self.etc / "plugstack.conf"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["dbd"]}
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.etc / "plugstack.conf").write_text("")
        dbd = self.etc / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF
        dbd.write_text(
            f"""{auth}DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["dbd"]}
SlurmUser={user}
PidFile={self.run / "slurmdbd.pid"}
LogFile={self.log / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["db"]}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""
        )
        dbd.chmod(0o600)

    def _start_slurmdbd(self, deadline: float) -> None:
        self.cmd("slurmdbd")
        self._wait(lambda: self.cmd("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
                   deadline, "slurmdbd")  # fmt: skip

    def _add_associations(self) -> None:
        """The cluster, one account and this user in it: what `sacctmgr` shows on a real cluster."""
        self.cmd("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.cmd("sacctmgr", "-i", "add", "account", self.account, f"Cluster={CLUSTER}", "Description=tests")
        self.cmd("sacctmgr", "-i", "add", "user", getpass.getuser(), f"Account={self.account}",
                 f"Cluster={CLUSTER}")  # fmt: skip

    # -- stop ------------------------------------------------------------------------------
    def stop(self, timeout: float = 30) -> None:
        """Cancel the jobs, stop every daemon and job process of this cluster, by pid."""
        if self.conf.exists():
            subprocess.run(["scancel", "--full", "-u", getpass.getuser()], env=self.env(),
                           capture_output=True, timeout=30)  # fmt: skip
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                queue = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env(), capture_output=True,
                                       text=True, timeout=30)  # fmt: skip
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            _stop_pid_file(self.run / f"{name}.pid", timeout)
        for pid in self._own_processes():
            _terminate(pid, timeout)
        if CONFIGLESS_LINK.is_symlink() and os.readlink(CONFIGLESS_LINK).startswith(str(self.root)):
            CONFIGLESS_LINK.unlink()

    def _own_processes(self) -> list[int]:
        """Processes started with this cluster's marker or SLURM_CONF (daemons, job steps, jobs)."""
        markers = {f"{MARKER}={self.root}".encode(), f"SLURM_CONF={self.conf}".encode()}
        skip = {os.getpid(), *_ancestors()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                if markers & set((entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def _ancestors() -> list[int]:
    pids, pid = [], os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        pids.append(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _terminate(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return


def _stop_pid_file(path: Path, timeout: float) -> None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        path.unlink(missing_ok=True)
        return
    _terminate(pid, timeout)
    path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(f"usage: {argv[0]} start|stop DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(Path(argv[2]).resolve())
    if argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
