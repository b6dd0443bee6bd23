"""Turn a child kernel's argv + env into a sandboxed argv + env.

Outer layer: bubblewrap (user, pid, net, ipc, uts, mount namespaces; a read-only system view; private
/tmp and home; the workspace as the only writable tree). Inner layer: the bootstrap
(``ironcage_jupyter.sandbox.bootstrap``) applying rlimits, cgroups, no_new_privs, non-dumpable,
Landlock and seccomp before the kernel starts. Where user namespaces are refused the bootstrap runs
without bubblewrap and the selftest reports the lost mechanisms.

Mechanism names accepted by ``SandboxSpec.disabled_layers`` (test-only): ``pidns``, ``mounts``,
``netns``, ``landlock``, ``seccomp``, ``limits``; or a layer name, which disables all of its
mechanisms: process -> pidns, filesystem -> mounts + landlock, network -> netns, syscall -> seccomp.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ironcage_jupyter
from ironcage_jupyter.sandbox import cgroups
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits

BWRAP = "bwrap"
SANDBOX_UID = 65534
MECHANISMS = ("pidns", "mounts", "netns", "landlock", "seccomp", "limits")
LAYER_MECHANISMS: dict[str, tuple[str, ...]] = {
    "process": ("pidns",),
    "filesystem": ("mounts", "landlock"),
    "network": ("netns",),
    "syscall": ("seccomp",),
}

# Read-only system trees visible in the sandbox (both in the mount view and in Landlock's rules).
SYSTEM_READ_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
# Host secrets outside home that a process running with host uid 0 could otherwise read.
SYSTEM_SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/ironcage",
)
HOME_SECRETS = (
    ".ssh",
    ".aws",
    ".config",
    ".netrc",
    ".gnupg",
    ".docker",
    ".kube",
    ".azure",
    ".git-credentials",
    ".gitconfig",
    ".pypirc",
    ".npmrc",
    ".jupyter",
    ".ipython",
    ".local/share/jupyter",
    ".bash_history",
    ".python_history",
    ".cache",
    ".pgpass",
    ".my.cnf",
    ".vault-token",
    ".terraform.d",
    ".ironcage",
)
# Environment variables the child may inherit; everything else (tokens, keys, proxies) is dropped.
ENV_ALLOWED = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "COLUMNS",
        "LINES",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "MPLBACKEND",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV",
        "JPY_PARENT_PID",
        "JPY_SESSION_NAME",
        "KERNEL_ID",
        "CLICOLOR",
        "FORCE_COLOR",
        "NO_COLOR",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
)


class SandboxError(RuntimeError):
    """The sandbox cannot be built as asked (fail closed)."""


@dataclass(frozen=True)
class SandboxSpec:
    workspace: Path  # the only writable tree (bound rw at the same path)
    socket_dir: Path  # private runtime dir holding the child's ipc sockets (0700), bound rw at the same path
    isolation: IsolationSettings
    limits: ResourceLimits
    hidden_paths: tuple[Path, ...] = ()  # extra paths to hide (Iron Cage dirs, Jupyter runtime dir)
    disabled_layers: frozenset[str] = frozenset()  # TEST-ONLY switch for layer-independence tests
    refuse_namespaces: bool = False  # TEST-ONLY: simulate Docker/AppArmor refusing user namespaces

    def disabled_mechanisms(self) -> frozenset[str]:
        out: set[str] = set()
        for name in self.disabled_layers:
            if name in LAYER_MECHANISMS:
                out.update(LAYER_MECHANISMS[name])
            elif name in MECHANISMS:
                out.add(name)
            else:
                raise SandboxError(f"unknown layer or mechanism in disabled_layers: {name!r}")
        return frozenset(out)

    @property
    def sandbox_name(self) -> str:
        return hashlib.sha256(str(self.socket_dir.resolve()).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- environment probing


@functools.lru_cache(maxsize=4)
def namespace_support(refuse: bool = False, bwrap: str = BWRAP) -> tuple[bool, str]:
    """Can bubblewrap create its namespaces here? (True, "") or (False, reason).

    With ``refuse`` the check runs under a Docker-like seccomp filter that refuses namespace
    creation, so the real fallback path (and bwrap's own error) is exercised.
    """
    exe = shutil.which(bwrap)
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed"
    argv = [exe, "--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--", "/bin/true"]
    if refuse:
        argv = [sys.executable, "-c", _REFUSE_NAMESPACES_SNIPPET, *argv]
    env = _package_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bubblewrap could not run: {exc}"
    if proc.returncode != 0:
        return False, f"user namespaces refused: {proc.stderr.strip() or f'bwrap exit {proc.returncode}'}"
    return True, ""


# Test harness only: install a seccomp filter refusing every namespace flag (as Docker's default
# profile does), then exec the rest of argv.
_REFUSE_NAMESPACES_SNIPPET = (
    "import os, sys, errno\n"
    "from ironcage_jupyter.sandbox import _seccomp as s\n"
    "rules = [s.Rule('unshare'), s.Rule('setns'), s.Rule('clone3', errno_code=errno.ENOSYS)]\n"
    "rules += [r for r in s.sandbox_rules(deny_network_sockets=False) if r.syscall == 'clone']\n"
    "s.install_filter(rules)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def _package_root() -> str:
    return str(Path(ironcage_jupyter.__file__).resolve().parent.parent)


def _package_env(env: dict[str, str]) -> dict[str, str]:
    """Make ironcage_jupyter importable by the bootstrap even when it is not installed."""
    root = _package_root()
    if any(Path(p).resolve() == Path(root) for p in sys.path if p and "site-packages" in p):
        return env
    env = dict(env)
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in entries:
        env["PYTHONPATH"] = os.pathsep.join([root, *entries])
    return env


def interpreter_paths() -> list[str]:
    """Trees the interpreter and its packages live in (bound back even when they are under $HOME)."""
    return list(_interpreter_paths())


@functools.lru_cache(maxsize=1)
def _interpreter_paths() -> tuple[str, ...]:
    # Fixed for the life of this interpreter: computed once per wrapper process.
    import site
    import sysconfig

    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, _package_root()}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        candidates.add(sysconfig.get_paths()[key])
    candidates.update(site.getsitepackages())
    candidates.add(str(Path(sys.executable).resolve().parent.parent))
    existing = sorted({str(Path(p).resolve()) for p in candidates if p and os.path.exists(p)})
    return tuple(_outermost(existing))


def _outermost(paths: list[str]) -> list[str]:
    out: list[str] = []
    for path in sorted(set(paths)):
        if not any(_is_within(path, kept) for kept in out):
            out.append(path)
    return out


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def hidden_paths_for(spec: SandboxSpec) -> list[str]:
    """Every path hidden from the child: home secrets, system secrets, Jupyter runtime, spec extras."""
    home = os.path.expanduser("~")
    paths = [os.path.join(home, name) for name in HOME_SECRETS]
    paths += list(SYSTEM_SECRETS)
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        paths.append(jupyter_runtime_dir())
    except Exception:  # jupyter_core missing or misconfigured: nothing to add  # noqa: S110
        pass
    paths += [str(p) for p in spec.hidden_paths]
    resolved: set[str] = set()
    for path in paths:
        resolved.add(os.path.abspath(path))
        if os.path.exists(path):
            resolved.add(os.path.realpath(path))
    return sorted(resolved)


# ---------------------------------------------------------------- Landlock rule expansion


def carve(allowed: list[str], hidden: list[str]) -> list[str]:
    """Landlock grants whole trees and cannot carve a hole: replace each allowed tree that contains a
    hidden path by its children minus the hidden route (recursively). The directory on the route
    itself loses its listing right, a price paid only where something is hidden."""
    out: list[str] = []
    for root in allowed:
        inner = [h for h in hidden if _is_within(h, root)]
        if not inner:
            out.append(root)
            continue
        if any(h == root for h in inner) or not os.path.isdir(root) or os.path.islink(root):
            continue
        try:
            # Symlinked entries get no rule (the bootstrap never follows links either).
            children = sorted(e.path for e in os.scandir(root) if not e.is_symlink())
        except OSError:
            continue
        out.extend(carve(children, inner))
    return out


# ---------------------------------------------------------------- the command


def build_sandboxed_command(
    kernel_argv: list[str], env: dict[str, str], spec: SandboxSpec
) -> tuple[list[str], dict[str, str]]:
    """Return (argv, env) that start ``kernel_argv`` inside every available isolation layer.

    ``env`` is filtered through an allowlist (plus ``isolation.pass_env``); secrets in the
    wrapper's environment never reach the child. Raises SandboxError when the spec is unusable.
    """
    if not kernel_argv:
        raise SandboxError("empty kernel argv")
    workspace = spec.workspace.resolve()
    socket_dir = spec.socket_dir.resolve()
    for label, path in (("workspace", workspace), ("socket_dir", socket_dir)):
        if not path.is_dir():
            raise SandboxError(f"{label} {path} is not a directory")
    if socket_dir.stat().st_mode & 0o077:
        raise SandboxError(f"socket_dir {socket_dir} must be private (0700)")
    if not sys.platform.startswith("linux"):
        # No namespaces, Landlock or seccomp exist here (macOS, Windows): nothing to apply.
        if not spec.isolation.unsafe:
            raise SandboxError(
                f"no isolation layer exists on {sys.platform}; only isolation.unsafe runs cells here"
            )
        return list(kernel_argv), _child_env(
            env, spec, home=os.path.expanduser("~"), tmp=tempfile.gettempdir(), keep_parent_pid=True
        )
    disabled = spec.disabled_mechanisms()
    use_bwrap, bwrap_reason = namespace_support(spec.refuse_namespaces)
    mounts = use_bwrap and "mounts" not in disabled
    home = os.path.realpath(os.path.expanduser("~"))
    hidden = hidden_paths_for(spec)
    for path in (workspace, socket_dir):
        if any(_is_within(str(path), h) for h in hidden):
            raise SandboxError(f"{path} lies inside a hidden path; refusing to expose it")
    # The private /tmp is a fresh tmpfs under bubblewrap. Landlock grants whole trees, so /tmp is only
    # granted when no hidden path is visible below it (one inside a workspace that lives under /tmp);
    # otherwise, and without the mount layer, temporary files go to a private dir in socket_dir.
    visible_hidden = [h for h in hidden if _is_within(h, str(workspace)) or _is_within(h, str(socket_dir))]
    if mounts and not any(_is_within(h, "/tmp") for h in visible_hidden):
        private_tmp = "/tmp"
    else:
        private_tmp = str(socket_dir / "tmp")
        os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    read_only = _outermost(
        [os.path.realpath(p) for p in SYSTEM_READ_ROOTS if os.path.exists(p)]
        + interpreter_paths()
        + [os.path.realpath(p) for p in spec.isolation.read_only_paths]
    )
    read_write = _outermost([str(workspace), str(socket_dir), private_tmp])
    devices_rw = ["/dev/null", "/dev/full", "/dev/zero", "/dev/tty", "/dev/pts", "/dev/ptmx"]
    if mounts:
        devices_rw.append("/dev/shm")  # bubblewrap's private /dev; the host's would be shared
    devices_ro = ["/dev/random", "/dev/urandom"]
    # Under bubblewrap /tmp is a fresh tmpfs: hidden paths on the host's /tmp are not in that view.
    landlock_hidden = [h for h in hidden if not (mounts and private_tmp == "/tmp" and _is_within(h, "/tmp"))]

    cg = None
    if "limits" not in disabled:
        cg = cgroups.create(
            spec.sandbox_name,
            max_processes=spec.limits.max_processes,
            memory_bytes=spec.limits.memory_mb * 1024 * 1024,
        )

    tcp_ports = sorted(set(spec.isolation.loopback_ports)) if use_bwrap and "netns" not in disabled else []
    outer: list[str] = []
    if use_bwrap:
        outer += ["userns", "session", "die_with_parent", "ipcns"]
        outer += [m for m in ("pidns", "netns", "mounts") if m not in disabled]
    required = _required_mechanisms(spec, use_bwrap, disabled)
    config: dict[str, object] = {
        "require": sorted(required),
        "outer": outer,
        "own_session": not use_bwrap,
        "seccomp": "seccomp" not in disabled,
        # The filter compiled by the wrapper (cached per rule set): the bootstrap only loads it.
        "seccomp_bpf": None if "seccomp" in disabled else compiled_seccomp_filter(bool(tcp_ports)),
        "landlock": None
        if "landlock" in disabled
        else {
            "read_only": carve(read_only + ["/proc", "/sys"], hidden) + devices_ro,
            # Carving a writable tree costs its top directory the right to create entries, so it is
            # only done when Landlock is the sole filesystem layer; under bubblewrap the mount view
            # already hides what lies inside the workspace.
            "read_write": (read_write if mounts else carve(read_write, landlock_hidden)) + devices_rw,
        },
        # Loopback TCP ports (tool egress bridge) only where the loopback is the sandbox's own.
        "tcp_ports": tcp_ports,
        "rlimits": {}
        if "limits" in disabled
        else _rlimits(spec.limits, memory_cgroup=cg is not None and "memory" in cg.controllers),
        # What the bootstrap applies instead when it could not join the cgroups (best effort): RLIMIT_AS
        # was relaxed only because the memory cgroup holds the real memory.
        "rlimits_without_cgroups": {} if "limits" in disabled else {"as": spec.limits.memory_mb * 1024 * 1024},
        "cgroup_procs": cg.procs_files if cg else [],
        "pythonpath_entry": _package_root(),
        # jupyter_client's launch_kernel sets JPY_PARENT_PID after we return; inside a pid namespace that
        # pid means nothing (ipykernel would see ppid 1 and exit): --die-with-parent does its job.
        "env_drop": (["PYTHONPATH"] if "PYTHONPATH" not in env else [])
        + (["JPY_PARENT_PID"] if use_bwrap and "pidns" not in disabled else []),
        "env_restore": {"PYTHONPATH": env["PYTHONPATH"]} if "PYTHONPATH" in env else {},
    }

    child_env = _child_env(
        env, spec, home=home, tmp=private_tmp, keep_parent_pid=not use_bwrap or "pidns" in disabled
    )
    bootstrap = [
        sys.executable,
        "-m",
        "ironcage_jupyter.sandbox.bootstrap",
        # Joined on a thread that starts before the bootstrap's imports (an RCU grace period).
        *[arg for procs in (cg.procs_files if cg else []) for arg in ("--cgroup", procs)],
        "--config",
        json.dumps(config),
        "--",
    ]
    argv = [*bootstrap, *kernel_argv]
    if use_bwrap:
        argv = [*_bwrap_args(spec, disabled, workspace, socket_dir, home, read_only, hidden, cg), "--", *argv]
    elif bwrap_reason and not spec.isolation.allow_degraded and not spec.isolation.unsafe:
        raise SandboxError(f"bubblewrap unavailable and degraded mode not allowed: {bwrap_reason}")
    return argv, child_env


@functools.lru_cache(maxsize=4)
def compiled_seccomp_filter(allow_tcp: bool) -> str | None:
    """The sandbox's seccomp filter as BPF compiled by libseccomp here (base64), or None when it
    cannot be compiled in the wrapper (the bootstrap then compiles it itself, and fails closed if it
    cannot). The same rule set always compiles to the same program: cached for the process."""
    import base64

    from ironcage_jupyter.sandbox import _seccomp

    try:
        program = _seccomp.export_filter(_seccomp.sandbox_rules(allow_tcp=allow_tcp))
    except (OSError, AttributeError):
        return None
    return base64.b64encode(program).decode("ascii")


def _required_mechanisms(spec: SandboxSpec, use_bwrap: bool, disabled: frozenset[str]) -> set[str]:
    if spec.isolation.unsafe:
        return set()
    required = {"no_new_privs", "drop_caps"}
    layers = set(spec.isolation.required_layers)
    if layers & {"filesystem", "network"} and "landlock" not in disabled:
        required.add("landlock")
    if layers & {"syscall", "network"} and "seccomp" not in disabled:
        required.add("seccomp")
    if "process" in layers:
        required.add("not_dumpable")
    return required


def address_space_mb(limits: ResourceLimits, *, memory_cgroup: bool) -> int:
    """RLIMIT_AS for the child, in MB.

    Address space is not memory: an idle ipykernel reserves about 0.8 GB of it (thread stacks, one
    malloc arena per thread) with about 50 MB resident, and a 64 MB output burst briefly maps 1.9 GB.
    Where a memory cgroup holds ``memory_mb`` of real memory, RLIMIT_AS is only a backstop against
    huge reservations: ``memory_mb + max(memory_mb, 2048)``. Without the cgroup it is the only memory
    limit and stays ``memory_mb`` (reservations count against it).
    """
    if memory_cgroup:
        return limits.memory_mb + max(limits.memory_mb, 2048)
    return limits.memory_mb


def _rlimits(limits: ResourceLimits, *, memory_cgroup: bool = False) -> dict[str, int]:
    out = {
        "as": address_space_mb(limits, memory_cgroup=memory_cgroup) * 1024 * 1024,
        "nproc": limits.max_processes,
        "core": 0,
        "nofile": limits.max_open_files,
        "fsize": limits.max_file_size_mb * 1024 * 1024,
    }
    if limits.cpu_seconds:
        out["cpu"] = limits.cpu_seconds
    return out


def _child_env(
    env: dict[str, str], spec: SandboxSpec, *, home: str, tmp: str, keep_parent_pid: bool
) -> dict[str, str]:
    allowed = ENV_ALLOWED | set(spec.isolation.pass_env)
    out = {k: v for k, v in env.items() if k in allowed or k.startswith("LC_")}
    if not keep_parent_pid:
        # Inside a pid namespace the wrapper's pid means nothing (ipykernel would see ppid 1 and exit);
        # --die-with-parent does that job instead.
        out.pop("JPY_PARENT_PID", None)
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    private = {
        # Under bubblewrap the real home path is a private tmpfs; without it home is not readable.
        "HOME": home if tmp == "/tmp" else f"{tmp}/home",
        "IPYTHONDIR": f"{tmp}/ipython",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "XDG_CACHE_HOME": f"{tmp}/cache",
        "XDG_CONFIG_HOME": f"{tmp}/config",
        "XDG_DATA_HOME": f"{tmp}/data",
        "XDG_RUNTIME_DIR": f"{tmp}/runtime",
        "JUPYTER_CONFIG_DIR": f"{tmp}/jupyter-config",
        "JUPYTER_DATA_DIR": f"{tmp}/jupyter-data",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/jupyter-runtime",
    }
    writable = (str(spec.socket_dir.resolve()), str(spec.workspace.resolve()))
    for key, default in private.items():
        # The caller's choice stands when it points into a tree the child may write (the wrapper
        # uses <runtime dir>/home); anything else (the user's real dirs) is replaced.
        value = env.get(key)
        if value and any(_is_within(os.path.realpath(value), w) for w in writable):
            out[key] = value
        else:
            out[key] = default
    out["TMPDIR"] = tmp
    out["PYTHONNOUSERSITE"] = "1"
    out["IRONCAGE_SANDBOX"] = spec.sandbox_name  # names this sandbox's processes (cleanup, tests)
    # The child's entry point cuts a flood of stream output shortly after the wrapper's own limit.
    out["IRONCAGE_OUTPUT_MAX_BYTES"] = str(spec.limits.output_max_bytes)
    return _package_env(out)


def _bwrap_args(
    spec: SandboxSpec,
    disabled: frozenset[str],
    workspace: Path,
    socket_dir: Path,
    home: str,
    read_only: list[str],
    hidden: list[str],
    cg: cgroups.CgroupSet | None,
) -> list[str]:
    exe = shutil.which(BWRAP) or BWRAP
    args = [exe, "--unshare-user", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns"]
    args += ["--die-with-parent", "--new-session", "--hostname", "ironcage"]
    if "pidns" not in disabled:
        args.append("--unshare-pid")
    if "netns" not in disabled:
        args.append("--unshare-net")
    if "mounts" in disabled:
        # Test-only: the host's tree, writable where the host allows (Landlock must hold alone).
        args += ["--bind", "/", "/", "--dev", "/dev"]
        if "pidns" not in disabled:
            args += ["--proc", "/proc"]
    else:
        binds: list[str] = []
        for root in SYSTEM_READ_ROOTS:
            if os.path.islink(root):  # merged /usr: /bin -> usr/bin
                args += ["--symlink", os.readlink(root), root]
        under_tmpfs = [r for r in read_only if _is_within(r, home) or _is_within(r, "/tmp")]
        for root in read_only:
            if root not in under_tmpfs:  # those are bound after their tmpfs below (once is enough)
                args += ["--ro-bind", root, root]
            binds.append(root)
        args += ["--ro-bind", "/sys", "/sys", "--dev", "/dev"]
        args += ["--proc", "/proc"] if "pidns" not in disabled else ["--ro-bind", "/proc", "/proc"]
        args += ["--tmpfs", "/tmp", "--perms", "0700", "--tmpfs", home]
        # Re-bind what lives under home or /tmp after their tmpfs (a venv or a checkout in either),
        # then the writable trees.
        for root in under_tmpfs:
            args += ["--ro-bind", root, root]
        args += ["--bind", str(workspace), str(workspace), "--bind", str(socket_dir), str(socket_dir)]
        binds += [str(workspace), str(socket_dir), "/sys"]
        for path in hidden:
            if not os.path.lexists(path) or not any(_is_within(path, b) for b in binds):
                continue  # not visible in the mount view anyway
            if os.path.isdir(path) and not os.path.islink(path):
                args += ["--perms", "0000", "--tmpfs", path]
            else:
                args += ["--ro-bind", "/dev/null", path]
    if cg:
        for procs in cg.procs_files:
            args += ["--bind", procs, procs]
    args += ["--chdir", str(workspace)]
    return args


def sandbox_cgroup_dirs(spec: SandboxSpec) -> list[Path]:
    directories = []
    for controller in ("pids", "memory"):
        base = cgroups._base_dir(controller)
        if base is not None and (base / f"ironcage-{spec.sandbox_name}").is_dir():
            directories.append(base / f"ironcage-{spec.sandbox_name}")
    return list(dict.fromkeys(directories))


def limit_hits(spec: SandboxSpec) -> dict[str, int]:
    """Counters of this sandbox's cgroup limits: {"processes": n fork failures, "oom_kills": n}."""
    total: dict[str, int] = {}
    for directory in sandbox_cgroup_dirs(spec):
        for key, value in cgroups.hits(directory).items():
            total[key] = total.get(key, 0) + value
    return total


def release_sandbox(spec: SandboxSpec) -> int:
    """Kill anything left in this sandbox's cgroups and remove them (call at kernel shutdown).

    Returns the number of processes killed."""
    return cgroups.release(cgroups.CgroupSet(spec.sandbox_name, tuple(sandbox_cgroup_dirs(spec)), ()))


def run_selftest(spec: SandboxSpec):  # type: ignore[no-untyped-def]
    """Prove each layer from inside a sandbox built by this module; see ``selftest.run_selftest``."""
    from ironcage_jupyter.sandbox.selftest import run_selftest as _run

    return _run(spec)
