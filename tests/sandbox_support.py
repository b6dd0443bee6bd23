"""Shared helpers for the sandbox tests: a sandboxed KernelManager, host-side bait, an attack battery."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager

from ironcage_jupyter.sandbox.launcher import SandboxSpec, build_sandboxed_command, release_sandbox
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits

CELL_TIMEOUT = 30


class SandboxedKernelManager(KernelManager):
    """A real ipykernel over ipc, launched through build_sandboxed_command."""

    sandbox_spec: SandboxSpec

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        argv, env = build_sandboxed_command(kernel_cmd, dict(kw.get("env") or os.environ), self.sandbox_spec)
        kw["env"] = env
        kw.pop("cwd", None)
        await super()._async_launch_kernel(argv, **kw)


@dataclass
class Bait:
    """Things a malicious cell would love to reach, set up on the host side."""

    root: Path
    home: Path
    workspace: Path
    socket_dir: Path
    secret: str = field(default_factory=lambda: "SECRET-" + secrets.token_hex(12))
    http: ThreadingHTTPServer | None = None
    udp: socket.socket | None = None
    hits: list[str] = field(default_factory=list)
    host_process: subprocess.Popen | None = None

    @classmethod
    def create(cls, root: Path) -> Bait:
        home = root / "home"
        workspace = home / "project"  # the usual layout: the notebook folder lives in home
        socket_dir = root / "run"
        workspace.mkdir(parents=True)
        socket_dir.mkdir(mode=0o700)
        bait = cls(root=root, home=home, workspace=workspace, socket_dir=socket_dir)
        bait._plant_files()
        bait._start_servers()
        bait.host_process = subprocess.Popen(
            ["sleep", "300"], env={"PATH": "/usr/bin:/bin", "HOST_SECRET": bait.secret}
        )
        return bait

    def _plant_files(self) -> None:
        files = {
            self.home / ".ssh/id_rsa": self.secret,
            self.home / ".aws/credentials": f"[default]\naws_secret_access_key={self.secret}\n",
            self.home / ".netrc": f"machine example.com password {self.secret}\n",
            self.home / ".config/gh/hosts.yml": f"token: {self.secret}\n",
            self.home / ".local/share/jupyter/runtime/jpserver-4242.json": json.dumps({"token": self.secret}),
            self.home / ".local/share/jupyter/runtime/kernel-x.json": json.dumps({"key": self.secret}),
            self.home / "notes.txt": self.secret,
            self.workspace / ".ironcage/policy.yaml": f"# {self.secret}\n",
            self.root / "ironcage-audit/audit.duckdb": self.secret,
            self.root / "outside/readme": "outside",
        }
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (self.root / "outside").chmod(0o777)
        # Planted by someone else before the kernel starts: links from the workspace to secrets.
        (self.workspace / "link_to_ssh_key").symlink_to(self.home / ".ssh/id_rsa")
        (self.workspace / "link_to_home").symlink_to(self.home)
        (self.workspace / "data.csv").write_text("a,b\n1,2\n")

    @property
    def hidden_paths(self) -> tuple[Path, ...]:
        return (self.workspace / ".ironcage", self.root / "ironcage-audit")

    def _start_servers(self) -> None:
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                hits.append(f"http {self.path}")
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"reached the host")

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)

    def udp_received(self) -> bool:
        assert self.udp is not None
        try:
            return bool(self.udp.recv(100))
        except BlockingIOError:
            return False

    def close(self) -> None:
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        if self.udp:
            self.udp.close()
        if self.host_process:
            self.host_process.kill()
            self.host_process.wait()

    def spec(self, **kw: Any) -> SandboxSpec:
        """A spec over the bait; each call gets its own private socket dir (and so its own cgroup)."""
        socket_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        return SandboxSpec(
            workspace=self.workspace,
            socket_dir=socket_dir,
            isolation=kw.pop("isolation", IsolationSettings()),
            limits=kw.pop("limits", ResourceLimits(memory_mb=2048)),
            hidden_paths=self.hidden_paths,
            **kw,
        )

    def targets(self) -> dict[str, Any]:
        assert self.http and self.udp and self.host_process
        return {
            "secret": self.secret,
            "home": str(self.home),
            "workspace": str(self.workspace),
            "root": str(self.root),
            "http_port": self.http.server_address[1],
            "udp_port": self.udp.getsockname()[1],
            "host_pid": self.host_process.pid,
            "wrapper_pid": os.getpid(),
            "site_packages": next(p for p in sys.path if p.endswith("site-packages")),
        }


class SandboxedKernel:
    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        km = SandboxedKernelManager(
            kernel_name="python3",
            transport="ipc",
            ip=str(spec.socket_dir / "kernel"),
            connection_file=str(spec.socket_dir / "kernel.json"),
        )
        km.sandbox_spec = spec
        self.km = km
        km.start_kernel()
        self.kc: BlockingKernelClient = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> tuple[dict, str]:
        """Execute a cell; return (execute_reply content, stdout + stderr + error text)."""
        chunks: list[str] = []

        def on_output(msg: dict) -> None:
            content = msg["content"]
            kind = msg["msg_type"]
            if kind == "stream":
                chunks.append(content["text"])
            elif kind == "error":
                chunks.append(f"{content['ename']}: {content['evalue']}")
            elif kind in ("execute_result", "display_data"):
                chunks.append(content["data"].get("text/plain", ""))

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=on_output)
        return reply["content"], "".join(chunks)

    def run_json(self, code: str) -> Any:
        reply, out = self.run(code)
        assert reply["status"] == "ok", out
        return json.loads(out.strip().splitlines()[-1])

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        finally:
            release_sandbox(self.spec)


# Each entry: name -> code run inside the kernel; it must print "LEAK: ..." if the attack worked and
# "BLOCKED: ..." otherwise. Targets are available as the dict T.
ATTACKS: dict[str, str] = {
    "read_ssh_key": "print_leak(read(T['home'] + '/.ssh/id_rsa'))",
    "read_aws_credentials": "print_leak(read(T['home'] + '/.aws/credentials'))",
    "read_netrc": "print_leak(read(T['home'] + '/.netrc'))",
    "read_config_dir": "print_leak(read(T['home'] + '/.config/gh/hosts.yml'))",
    "read_home_file": "print_leak(read(T['home'] + '/notes.txt'))",
    "read_jupyter_server_token": "print_leak(read(T['home'] + '/.local/share/jupyter/runtime/jpserver-4242.json'))",
    "read_connection_file": "print_leak(read(T['home'] + '/.local/share/jupyter/runtime/kernel-x.json'))",
    "list_runtime_dir": "print_leak(' '.join(os.listdir(T['home'] + '/.local/share/jupyter/runtime')) + ' ' + read(T['home'] + '/.local/share/jupyter/runtime/' + os.listdir(T['home'] + '/.local/share/jupyter/runtime')[0]))",
    "read_hidden_in_workspace": "print_leak(read(T['workspace'] + '/.ironcage/policy.yaml'))",
    "read_audit_dir": "print_leak(read(T['root'] + '/ironcage-audit/audit.duckdb'))",
    "planted_symlink": "print_leak(read(T['workspace'] + '/link_to_ssh_key'))",
    "planted_dir_symlink": "print_leak(read(T['workspace'] + '/link_to_home/.ssh/id_rsa'))",
    "new_symlink": "os.symlink(T['home'] + '/.aws/credentials', T['workspace'] + '/l2'); print_leak(read(T['workspace'] + '/l2'))",
    "hardlink": "os.link(T['home'] + '/.ssh/id_rsa', T['workspace'] + '/h1'); print_leak(read(T['workspace'] + '/h1'))",
    "proc_self_root": "print_leak(read('/proc/self/root' + T['home'] + '/.ssh/id_rsa'))",
    "proc_1_root": "print_leak(read('/proc/1/root' + T['home'] + '/.ssh/id_rsa'))",
    "host_process_environ": "print_leak(read('/proc/%d/environ' % T['host_pid']))",
    "host_process_root": "print_leak(read('/proc/%d/root%s/.ssh/id_rsa' % (T['host_pid'], T['home'])))",
    "write_outside": "write(T['root'] + '/outside/pwned')",
    "write_home_bashrc": "write(T['home'] + '/.bashrc')",
    "write_ipython_startup": "write(T['home'] + '/.ipython/profile_default/startup/00-pwn.py')",
    "write_site_packages": "write(T['site_packages'] + '/ironcage_pwn.pth')",
    "write_etc": "write('/etc/ironcage_pwn')",
    "tcp_to_host_server": "import urllib.request; print_leak(urllib.request.urlopen('http://127.0.0.1:%d/x' % T['http_port'], timeout=2).read().decode())",
    "udp_to_host": "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', T['udp_port'])); print('SENT')",
    "dns_lookup": "print_leak(str(socket.getaddrinfo('pypi.org', 443)))",
    "ipv6_socket": "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(1); s.connect(('::1', T['http_port'])); print_leak('connected v6')",
    "raw_socket": "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print_leak('raw socket')",
    "netlink_sock_diag": "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4); print_leak('netlink socket')",
    "signal_wrapper": "os.kill(T['wrapper_pid'], signal.SIGCONT); print_leak('signalled wrapper')",
    "signal_host_process": "os.kill(T['host_pid'], signal.SIGCONT); print_leak('signalled host process')",
    "ptrace_wrapper": "libc_call('ptrace', 16, T['wrapper_pid'], 0, 0)",  # PTRACE_ATTACH
    "ptrace_init": "libc_call('ptrace', 16, 1, 0, 0)",
    "ptrace_parent": "libc_call('ptrace', 16, os.getppid(), 0, 0)",
    "unshare_user": "libc_call('unshare', 0x10000000)",
    "unshare_net": "libc_call('unshare', 0x40000000)",
    "unshare_mount": "libc_call('unshare', 0x00020000)",
    "mount_tmpfs": "libc_call('mount', b'none', b'/tmp', b'tmpfs', 0, None)",
    "chroot": "libc_call('chroot', b'/tmp')",
    "setns_host": "fd = os.open('/proc/%d/ns/net' % T['host_pid'], os.O_RDONLY); libc_call('setns', fd, 0)",
    "process_vm_readv": "libc_call('process_vm_readv', T['wrapper_pid'], None, 0, None, 0, 0, errno_ok=(errno.EFAULT, errno.EINVAL))",
    "keyctl": "libc_call('syscall', 250, 0x11, 0, 0, 0)",  # keyctl(KEYCTL_GET_PERSISTENT)
    "bpf": "libc_call('syscall', 321, 0, 0, 0)",
    "personality_no_aslr": "libc_call('personality', 0x0040000)",
}

_PRELUDE = textwrap.dedent(
    """
    import ctypes, errno, json, os, signal, socket
    T = json.loads({targets!r})
    _libc = ctypes.CDLL(None, use_errno=True)
    def read(path):
        with open(path) as f:
            return f.read()
    def print_leak(data):
        print('LEAK: ' + data[:200] if T['secret'] in data or 'reached the host' in data or 'connected' in data or 'socket' in data or 'signalled' in data else 'BLOCKED: harmless content')
    def write(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write('pwned')
        print('WROTE ' + path)
    def libc_call(name, *args, errno_ok=()):
        rc = getattr(_libc, name)(*args)
        err = ctypes.get_errno()
        if rc == -1 and err not in errno_ok:
            print('BLOCKED: ' + errno.errorcode.get(err, str(err)))
        else:
            print('LEAK: %s returned %s (%s)' % (name, rc, errno.errorcode.get(err, err)))
    """
)


def battery_code(targets: dict[str, Any], names: list[str] | None = None) -> str:
    """One cell running every attack in isolation; prints {name: outcome} as JSON."""
    lines = [_PRELUDE.format(targets=json.dumps(targets)), "import contextlib, io", "_results = {}"]
    for name, code in ATTACKS.items():
        if names is not None and name not in names:
            continue
        lines.append(
            textwrap.dedent(
                f"""
                _buf = io.StringIO()
                try:
                    with contextlib.redirect_stdout(_buf):
                        exec({code!r})
                    _results[{name!r}] = _buf.getvalue().strip() or 'BLOCKED: no output'
                except BaseException as _exc:
                    _results[{name!r}] = _buf.getvalue().strip() or ('BLOCKED: %s: %s' % (type(_exc).__name__, _exc))
                """
            )
        )
    lines.append("print(json.dumps(_results))")
    return "\n".join(lines)


def run_battery(kernel: SandboxedKernel, bait: Bait, names: list[str] | None = None) -> dict[str, str]:
    results = kernel.run_json(battery_code(bait.targets(), names))
    # Judged on the host side too: did anything arrive?
    if bait.hits:
        results["tcp_to_host_server"] = f"LEAK: host server saw {bait.hits}"
    if bait.udp_received():
        results["udp_to_host"] = "LEAK: UDP datagram arrived on the host"
    elif results.get("udp_to_host") == "SENT":
        results["udp_to_host"] = "BLOCKED: datagram never reached the host"
    # Writes are judged on the host: a write into the sandbox's private tmpfs home is harmless.
    for name, outcome in results.items():
        if outcome.startswith("WROTE "):
            path = Path(outcome.split(" ", 1)[1])
            if path.exists():
                path.unlink()
                results[name] = f"LEAK: {path} appeared on the host"
            else:
                results[name] = "BLOCKED: written only inside the sandbox's private view"
    return results


def leaks(results: dict[str, str]) -> dict[str, str]:
    return {name: outcome for name, outcome in results.items() if not outcome.startswith("BLOCKED")}
