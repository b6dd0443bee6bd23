"""Signals, ptrace and memory access against the wrapper and other host processes, namespace and
mount tricks, through the real ironcage kernel."""

from __future__ import annotations

import pytest
from sandbox_wrapper import Wrapper, assert_nothing_got_out, module_bait

from kernel_helpers import process_alive

pytestmark = pytest.mark.timeout(240)


bait = module_bait("attacks-proc")


@pytest.fixture(scope="module", params=["namespaces", "degraded"])
def wrapper(bait, request):
    w = Wrapper(bait, sandbox={"refuse_namespaces": request.param == "degraded"})
    yield w
    w.close()


LIBC = "import ctypes, os, signal; libc = ctypes.CDLL(None, use_errno=True)\n"


def _blocked_unless(expr: str) -> str:
    """A libc call that returns -1 when refused; prints ESCAPED if it was not."""
    return LIBC + f"rc = {expr}\nprint('ESCAPED' if rc != -1 else 'refused: errno %d' % ctypes.get_errno())"


def _refused_eperm(expr: str) -> str:
    """A call refused by the syscall filter fails with EPERM whatever its arguments."""
    return (
        LIBC
        + f"rc = {expr}\nerr = ctypes.get_errno()\nprint('refused' if rc == -1 and err == 1 else 'ESCAPED (errno %d)' % err)"
    )


CELLS = {
    "kill_wrapper": "import os, signal; os.kill({wrapper}, signal.SIGKILL); print('ESCAPED')",
    "stop_wrapper": "import os, signal; os.kill({wrapper}, signal.SIGSTOP); print('ESCAPED')",
    "kill_host_process": "import os, signal; os.kill({host}, signal.SIGKILL); print('ESCAPED')",
    "killpg_wrapper": "import os, signal; os.killpg(os.getpgid({wrapper}), signal.SIGKILL); print('ESCAPED')",
    "pidfd_signal": "import os, signal; fd = os.pidfd_open({wrapper}); signal.pidfd_send_signal(fd, signal.SIGKILL); print('ESCAPED')",
    "ptrace_attach_wrapper": _blocked_unless("libc.ptrace(16, {wrapper}, 0, 0)"),
    "ptrace_seize_host": _blocked_unless("libc.ptrace(0x4206, {host}, 0, 0)"),
    "ptrace_parent": _blocked_unless("libc.ptrace(16, os.getppid(), 0, 0)"),
    "ptrace_traceme": _blocked_unless("libc.ptrace(0, 0, 0, 0)"),
    "process_vm_readv": (
        LIBC
        + "class iovec(ctypes.Structure): _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf = ctypes.create_string_buffer(64); local = iovec(ctypes.addressof(buf), 64); remote = iovec(0x400000, 64)\n"
        "n = libc.process_vm_readv({wrapper}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n"
        "print('ESCAPED' if n != -1 else 'refused')"
    ),
    "proc_mem_write": "open('/proc/{wrapper}/mem', 'wb').write(b'x'); print('ESCAPED')",
    "setns_host_net": LIBC
    + "fd = os.open('/proc/{host}/ns/net', os.O_RDONLY)\nprint('ESCAPED' if libc.setns(fd, 0) != -1 else 'refused')",
    "unshare_user": _blocked_unless("libc.unshare(0x10000000)"),
    "unshare_net": _blocked_unless("libc.unshare(0x40000000)"),
    "unshare_mount": _blocked_unless("libc.unshare(0x00020000)"),
    "unshare_cli": "import subprocess; r = subprocess.run(['unshare', '-r', 'id'], capture_output=True, text=True); print('ESCAPED' if r.returncode == 0 else r.stderr)",
    "mount_proc": _blocked_unless("libc.mount(b'proc', b'/tmp', b'proc', 0, None)"),
    "chroot": _blocked_unless("libc.chroot(b'/')"),
    "bpf": _refused_eperm("libc.syscall(321, 0, 0, 0)"),
    "perf_event": _refused_eperm("libc.syscall(298, 0, 0, -1, -1, 0)"),
    "keyctl": _refused_eperm("libc.syscall(250, 0x11, 0, 0, 0)"),
    "init_module": _refused_eperm("libc.syscall(175, 0, 0, b'')"),
    "kexec_load": _refused_eperm("libc.syscall(246, 0, 0, 0, 0)"),
    "personality": _blocked_unless("libc.personality(0x0040000)"),
    "io_uring": _refused_eperm("libc.syscall(425, 8, None)"),
    "userfaultfd": _blocked_unless("libc.syscall(323, 0)"),
    "tiocsti": LIBC
    + "import fcntl, termios\nfd = os.open('/dev/tty', os.O_RDWR)\nfcntl.ioctl(fd, termios.TIOCSTI, b'x'); print('ESCAPED')",
    "setuid_root": "import os\ntry:\n    os.setuid(0)\nexcept OSError:\n    pass\nprint('ESCAPED' if os.geteuid() == 0 and int(open('/proc/self/status').read().split('CapEff:')[1].split()[0], 16) else 'no root powers')",
    "dumpable_back_on": LIBC
    + "libc.prctl(4, 1, 0, 0, 0)\nprint('ESCAPED' if 'WRAPPER_SECRET' in open('/proc/{wrapper}/environ').read() else 'no')",
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_process_attacks_fail(wrapper, bait, name):
    code = CELLS[name].format(wrapper=wrapper.pid, host=bait.host_process.pid)
    ex = wrapper.attack(code)
    assert_nothing_got_out(bait, ex, context=name)
    assert wrapper.alive(), f"{name} killed the wrapper"
    assert process_alive(bait.host_process.pid), f"{name} killed a host process"
    with open(f"/proc/{wrapper.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] != "T", f"{name} stopped the wrapper"
    assert "ESCAPED" not in ex.stdout, f"{name} succeeded: {ex.text[:300]}"


def test_kill_everything_visible_only_kills_the_sandbox(wrapper, bait):
    """kill(-1, SIGKILL) reaches only what the child may signal: its own sandbox (pid namespace, or
    Landlock's signal scope in degraded mode). The wrapper and host processes survive; if the child
    killed itself the wrapper reports the lost state and starts a fresh one."""
    ex = wrapper.attack("import os, signal; os.kill(-1, signal.SIGKILL)")
    assert wrapper.alive() and process_alive(bait.host_process.pid)
    assert ex.status == "ok" or ex.error["ename"] in (
        "KernelStateLost",
        "ProcessLookupError",
        "PermissionError",
    )
    assert wrapper.responsive()


def test_wrapper_is_unharmed(wrapper):
    assert wrapper.alive() and wrapper.responsive()
