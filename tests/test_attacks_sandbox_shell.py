"""Shell escapes of every spelling, through the real ironcage kernel: commands may run, but only
inside the sandbox, so none of them reads a secret, reaches the host or writes outside the workspace."""

from __future__ import annotations

import pytest
from sandbox_support import Bait
from sandbox_wrapper import (
    Wrapper,
    assert_nothing_got_out,
    module_bait,
    module_wrapper,
    visible_text,
)

pytestmark = pytest.mark.timeout(240)


bait = module_bait("attacks-shell")


wrapper = module_wrapper()


KEY = "{home}/.ssh/id_rsa"
SHELL_READS = {
    "os_system": "import os; os.system('cat {key}')",
    "os_popen": "import os; print(os.popen('cat {key} 2>&1').read())",
    "subprocess_run": "import subprocess; print(subprocess.run(['cat', '{key}'], capture_output=True, text=True))",
    "subprocess_shell": "import subprocess; print(subprocess.run('cat {key}; cat {home}/.aws/credentials', shell=True, capture_output=True, text=True))",
    "check_output": "import subprocess; print(subprocess.check_output('cat {home}/.netrc || true', shell=True))",
    "bang": "!cat {key}",
    "bang_bang": "!!cat {key}",
    "sx_magic": "%sx cat {key}",
    "system_magic": "%system cat {key}",
    "bash_cell": "%%bash\ncat {key}\ncat {home}/.local/share/jupyter/runtime/*.json",
    "sh_cell": "%%sh\ncat {key}",
    "script_cell": "%%script bash\ncat {key}",
    "get_ipython_system": "get_ipython().system('cat {key}')",
    "get_ipython_getoutput": "print(get_ipython().getoutput('cat {key}'))",
    "posix_spawn": "import os; pid = os.posix_spawn('/bin/cat', ['cat', '{key}'], dict(os.environ)); os.waitpid(pid, 0)",
    "fork_execv": "import os\npid = os.fork()\nif pid == 0:\n    os.execv('/bin/cat', ['cat', '{key}'])\nos.waitpid(pid, 0)",
    "posixsubprocess_fork_exec": (
        "import _posixsubprocess, os, subprocess\n"
        "r, w = os.pipe(); er, ew = os.pipe()\n"
        "pid = _posixsubprocess.fork_exec([b'/bin/cat', b'{key}'], [b'/bin/cat'], True, (w, ew), None, None,"
        " -1, -1, -1, w, -1, w, er, ew, True, False, -1, None, None, None, -1, None, False)\n"
        "os.close(w); os.close(ew); os.waitpid(pid, 0); print(os.read(r, 4096))"
    ),
    "pty_spawn": "import pty, os\npid, fd = pty.fork()\nif pid == 0:\n    os.execv('/bin/cat', ['cat', '{key}'])\nimport time\nout = b''\ntry:\n    while True:\n        chunk = os.read(fd, 1024)\n        if not chunk: break\n        out += chunk\nexcept OSError:\n    pass\nprint(out)",
    "bash_wrapper_environ": '!bash -c \'cat /proc/{wrapper}/environ | tr "\\0" "\\n"\'',
    "bash_find_secrets": "!find / -name 'id_rsa' -o -name 'credentials' -o -name 'jpserver-*.json' 2>/dev/null | xargs cat 2>/dev/null",
    "python_subinterpreter": "!python3 -c \"print(open('{key}').read())\"",
    "env_dump": "!env; !cat /proc/self/environ",
}
SHELL_NETWORK = {
    "curl_host": "!curl -s --noproxy '*' -m 2 http://127.0.0.1:{port}/curl",
    "wget_host": "!wget --no-proxy -q -t 1 -T 2 -O - http://127.0.0.1:{port}/wget",
    "bash_dev_tcp": "%%bash\nexec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /devtcp HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
    "bash_dev_udp": "%%bash\necho x > /dev/udp/127.0.0.1/{udp}",
    "curl_dns": "!curl -s --noproxy '*' -m 2 https://pypi.org/simple/ | head -c 100",
    "python_child_socket": "!python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port}), 2); s.send(b'GET /child HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))\"",
}
SHELL_WRITES = {
    "bash_write_home": "!echo pwned > {home}/.bashrc",
    "bash_write_outside": "!echo pwned > {root}/outside/pwned",
    "bash_write_site": "!echo 'import os' > {site}/ironcage_pwn.pth",
    "bash_write_etc": "!echo pwned > /etc/profile.d/ironcage_pwn.sh",
    "bash_mount": "!mount -t tmpfs none /mnt && echo MOUNTED",
    "bash_unshare": "!unshare -r -n true && echo UNSHARED",
}


def _fmt(bait: Bait, wrapper: Wrapper, code: str) -> str:
    t = bait.targets()
    return code.format(
        key=KEY.format(home=t["home"]),
        home=t["home"],
        root=t["root"],
        site=t["site_packages"],
        port=t["http_port"],
        udp=t["udp_port"],
        wrapper=wrapper.pid,
    )


@pytest.mark.parametrize("name", sorted(SHELL_READS))
def test_shell_reads_find_no_secret(wrapper, bait, name):
    ex = wrapper.attack(_fmt(bait, wrapper, SHELL_READS[name]))
    assert_nothing_got_out(bait, ex, context=name)


@pytest.mark.parametrize("name", sorted(SHELL_NETWORK))
def test_shell_network_reaches_nothing(wrapper, bait, name):
    ex = wrapper.attack(_fmt(bait, wrapper, SHELL_NETWORK[name]))
    assert_nothing_got_out(bait, ex, context=name)
    assert "HTTP/1.0 200" not in visible_text(ex)


@pytest.mark.parametrize("name", sorted(SHELL_WRITES))
def test_shell_writes_do_not_land_on_the_host(wrapper, bait, name):
    t = bait.targets()
    ex = wrapper.attack(_fmt(bait, wrapper, SHELL_WRITES[name]))
    assert_nothing_got_out(bait, ex, context=name)
    assert "MOUNTED" not in ex.stdout and "UNSHARED" not in ex.stdout
    for path in (
        f"{t['home']}/.bashrc",
        f"{t['root']}/outside/pwned",
        f"{t['site_packages']}/ironcage_pwn.pth",
        "/etc/profile.d/ironcage_pwn.sh",
    ):
        assert not __import__("os").path.exists(path), f"{name} wrote {path}"


def test_wrapper_is_unharmed(wrapper):
    assert wrapper.alive() and wrapper.responsive()


def test_control_the_same_cells_leak_without_the_sandbox(bait, tmp_path_factory):
    """The attacks are real: with filesystem, network and syscall mechanisms off (unsafe opt-in), they
    get out. Proves this suite can fail."""
    w = Wrapper(bait, sandbox={"disabled": ["filesystem", "netns", "seccomp"], "isolation": {"unsafe": True}})
    try:
        ex = w.attack(_fmt(bait, w, SHELL_READS["bang"]))
        assert bait.secret in visible_text(ex)
        ex = w.attack(_fmt(bait, w, SHELL_NETWORK["curl_host"]))
        assert "reached the host" in visible_text(ex)
    finally:
        w.close()
        bait.hits.clear()


def test_missing_required_layer_refuses_every_cell(bait):
    """Fail closed: the selftest finds the filesystem layer missing, so no cell runs, and the user is
    told exactly why."""
    w = Wrapper(bait, sandbox={"disabled": ["filesystem"]})
    try:
        ex = w.attack("print('should not run')")
        assert ex.status == "error"
        assert ex.error["ename"] == "IronCageUnavailable"
        assert "required layer 'filesystem' is missing" in ex.error["evalue"]
        assert "canary" in ex.error["evalue"]
        assert "should not run" not in ex.stdout
    finally:
        w.close()
