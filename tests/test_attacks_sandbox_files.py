"""Secrets, connection files, the Jupyter server token, /proc tricks, links and persistence writes,
through the real ironcage kernel with the sandbox. Every cell runs; nothing it does gets out."""

from __future__ import annotations

import os
from pathlib import Path

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


bait = module_bait("attacks-files")


wrapper = module_wrapper()


READS = {
    "ssh_key": "print(open('{home}/.ssh/id_rsa').read())",
    "aws": "print(open('{home}/.aws/credentials').read())",
    "netrc": "print(open('{home}/.netrc').read())",
    "config_dir": "print(open('{home}/.config/gh/hosts.yml').read())",
    "home_file": "print(open('{home}/notes.txt').read())",
    "pathlib_glob_home": "from pathlib import Path; print([p.read_text() for p in Path('{home}').rglob('*') if p.is_file()])",
    "os_walk_home": "import os; print([open(os.path.join(d, f)).read() for d, _, fs in os.walk('{home}') for f in fs])",
    "jupyter_server_token": "print(open('{home}/.local/share/jupyter/runtime/jpserver-4242.json').read())",
    "kernel_connection_file": "print(open('{home}/.local/share/jupyter/runtime/kernel-x.json').read())",
    "wrapper_connection_file": "print(open('{conn}').read())",
    "jupyter_runtime_listing": "import os; d = '{runtime}'; print([open(os.path.join(d, f)).read() for f in os.listdir(d)])",
    "jupyter_core_paths": "from jupyter_core.paths import jupyter_runtime_dir; import os; d = jupyter_runtime_dir(); print(d, [open(os.path.join(d, f)).read() for f in os.listdir(d)])",
    "hidden_in_workspace": "print(open('.ironcage/policy.yaml').read())",
    "audit_dir": "print(open('{root}/ironcage-audit/audit.duckdb').read())",
    "wrapper_environ": "print(open('/proc/{wrapper}/environ').read())",
    "wrapper_mem": "f = open('/proc/{wrapper}/mem', 'rb'); print(f.read(100))",
    "wrapper_cwd_root": "print(open('/proc/{wrapper}/root{home}/.ssh/id_rsa').read())",
    "wrapper_fd_listing": "import os; print([os.readlink('/proc/{wrapper}/fd/' + f) for f in os.listdir('/proc/{wrapper}/fd')])",
    "host_process_environ": "print(open('/proc/{host_pid}/environ').read())",
    "proc_self_root": "print(open('/proc/self/root{home}/.ssh/id_rsa').read())",
    "proc_1_root": "print(open('/proc/1/root{home}/.ssh/id_rsa').read())",
    "proc_1_environ": "print(open('/proc/1/environ').read())",
    "proc_parent_environ": "import os; print(open('/proc/%d/environ' % os.getppid()).read())",
    "planted_symlink": "print(open('link_to_ssh_key').read())",
    "planted_dir_symlink": "print(open('link_to_home/.ssh/id_rsa').read())",
    "new_symlink": "import os; os.symlink('{home}/.aws/credentials', 'aws_link'); print(open('aws_link').read())",
    "new_hardlink": "import os; os.link('{home}/.ssh/id_rsa', 'key_link'); print(open('key_link').read())",
    "rename_in": "import os; os.rename('{home}/.netrc', 'netrc_moved'); print(open('netrc_moved').read())",
    "dotdot_escape": "print(open('../.ssh/id_rsa').read())",
    "ctypes_libc_open": (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.open(b'{home}/.ssh/id_rsa', 0); buf = ctypes.create_string_buffer(200)\n"
        "n = libc.read(fd, buf, 200); print(fd, ctypes.get_errno(), buf.raw[:max(n, 0)])"
    ),
    "ctypes_openat2": (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.syscall(257, -100, b'/proc/self/root{home}/.ssh/id_rsa', 0, 0)\n"
        "buf = ctypes.create_string_buffer(200); n = libc.read(fd, buf, 200); print(fd, buf.raw[:max(n, 0)])"
    ),
    "open_by_handle": (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "h = ctypes.create_string_buffer(128); ctypes.memmove(h, (128).to_bytes(4, 'little'), 4); m = ctypes.c_int()\n"
        "print(libc.name_to_handle_at(-100, b'/', h, ctypes.byref(m), 0), ctypes.get_errno())\n"
        "fd = libc.open_by_handle_at(-100, h, 0); print('fd', fd, ctypes.get_errno())"
    ),
    "etc_shadow": "print(open('/etc/shadow').read())",
    "ssh_host_keys": "import glob; print([open(p).read() for p in glob.glob('/etc/ssh/*key*')])",
}

WRITES = {
    "ipython_startup": "{home}/.ipython/profile_default/startup/00-pwn.py",
    "bashrc": "{home}/.bashrc",
    "profile": "{home}/.profile",
    "jupyter_config": "{home}/.jupyter/jupyter_server_config.py",
    "site_packages_pth": "{site}/ironcage_pwn.pth",
    "sitecustomize": "{site}/sitecustomize.py",
    "user_site": "{home}/.local/lib/python3.11/site-packages/usercustomize.py",
    "kernelspec_hijack": "{jupyter_path}/kernels/ironcage/kernel.json",
    "outside_workspace": "{root}/outside/pwned",
    "workspace_parent": "{home}/pwned.txt",
    "etc": "/etc/ironcage_pwn",
    "host_tmp": "/tmp/ironcage_pwn_{secret}",
    "audit_tamper": "{root}/ironcage-audit/audit.duckdb",
}


def _fmt(bait: Bait, wrapper: Wrapper, code: str, jupyter_path: Path | None = None) -> str:
    t = bait.targets()
    return code.format(
        home=t["home"],
        root=t["root"],
        site=t["site_packages"],
        wrapper=wrapper.pid,
        host_pid=t["host_pid"],
        conn=wrapper.km.connection_file,
        runtime=os.path.dirname(wrapper.km.connection_file),
        jupyter_path=jupyter_path or "",
        secret=bait.secret,
    )


@pytest.mark.parametrize("name", sorted(READS))
def test_reads_get_nothing(wrapper, bait, name):
    ex = wrapper.attack(_fmt(bait, wrapper, READS[name]))
    assert_nothing_got_out(bait, ex, context=name)
    key = Path(wrapper.km.connection_file).read_text()
    assert '"key"' in key and key.split('"key": "')[1][:20] not in visible_text(ex)  # the wrapper's HMAC key


@pytest.mark.parametrize("name", sorted(WRITES))
def test_persistence_writes_do_not_land(wrapper, bait, name, ironcage_jupyter_path):
    target = _fmt(bait, wrapper, WRITES[name], ironcage_jupyter_path)
    before = Path(target).read_bytes() if os.path.exists(target) else None
    code = f"import os\nos.makedirs(os.path.dirname({target!r}), exist_ok=True)\nopen({target!r}, 'w').write('import os  # pwned')"
    ex = wrapper.attack(code)
    assert ex.error is None or not ex.error["ename"].startswith("Policy"), ex.error  # reached the child
    after = Path(target).read_bytes() if os.path.exists(target) else None
    assert after == before, f"{name}: {target} changed on the host ({ex.status})"


def test_workspace_stays_usable(wrapper, bait):
    ex = wrapper.attack("open('notes.md', 'w').write('ok'); print(open('data.csv').read())")
    assert ex.status == "ok" and "a,b" in ex.stdout
    assert (bait.workspace / "notes.md").read_text() == "ok"


def test_wrapper_is_unharmed(wrapper):
    assert wrapper.alive() and wrapper.responsive()
