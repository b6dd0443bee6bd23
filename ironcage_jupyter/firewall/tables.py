"""What the AST rules look for. Qualified names are resolved through imports and aliases first."""

from __future__ import annotations

import re

# (finding id, category, severity, message) per qualified name that is dangerous to call or reference.
Rule = tuple[str, str, str, str]

_SHELL_CALL: Rule = ("IC-SHELL-001", "shell", "high", "runs a shell command or another program")
_PROC_EXEC: Rule = ("IC-SHELL-002", "shell", "high", "replaces or forks the process (exec/spawn/fork)")
_PTY: Rule = ("IC-SHELL-003", "shell", "high", "spawns a program on a pseudo-terminal")
_FORK_EXEC: Rule = ("IC-SHELL-004", "shell", "critical", "calls _posixsubprocess.fork_exec (unaudited process creation)")

DANGEROUS_NAMES: dict[str, Rule] = {
    "os.system": _SHELL_CALL,
    "os.popen": _SHELL_CALL,
    "os.popen2": _SHELL_CALL,
    "os.popen3": _SHELL_CALL,
    "os.fork": _PROC_EXEC,
    "os.forkpty": _PTY,
    "os.posix_spawn": _PROC_EXEC,
    "os.posix_spawnp": _PROC_EXEC,
    "os.startfile": _SHELL_CALL,
    "platform.popen": _SHELL_CALL,
    "pty.spawn": _PTY,
    "pty.fork": _PTY,
    "asyncio.create_subprocess_shell": _SHELL_CALL,
    "asyncio.create_subprocess_exec": _SHELL_CALL,
    "_posixsubprocess.fork_exec": _FORK_EXEC,
    "multiprocessing.util.spawnv_passfds": _PROC_EXEC,
    "webbrowser.open": ("IC-SHELL-005", "shell", "medium", "starts a browser program"),
    "eval": ("IC-DYN-001", "dynamic_code", "medium", "evaluates dynamic code"),
    "exec": ("IC-DYN-001", "dynamic_code", "medium", "executes dynamic code"),
    "compile": ("IC-DYN-001", "dynamic_code", "medium", "compiles dynamic code"),
    "execfile": ("IC-DYN-001", "dynamic_code", "medium", "executes a file"),
    "runpy.run_path": ("IC-DYN-005", "dynamic_code", "medium", "runs a file or module as code"),
    "runpy.run_module": ("IC-DYN-005", "dynamic_code", "medium", "runs a file or module as code"),
    "code.InteractiveInterpreter": ("IC-DYN-005", "dynamic_code", "medium", "runs an embedded interpreter"),
    "code.InteractiveConsole": ("IC-DYN-005", "dynamic_code", "medium", "runs an embedded interpreter"),
    "code.interact": ("IC-DYN-005", "dynamic_code", "medium", "runs an embedded interpreter"),
    "types.FunctionType": ("IC-DYN-006", "dynamic_code", "high", "builds a function from a code object"),
    "types.CodeType": ("IC-DYN-006", "dynamic_code", "high", "builds a code object"),
    "sys._getframe": ("IC-REFL-003", "reflection", "high", "walks interpreter frames"),
    "inspect.currentframe": ("IC-REFL-003", "reflection", "high", "walks interpreter frames"),
    "inspect.stack": ("IC-REFL-003", "reflection", "medium", "walks interpreter frames"),
    "inspect.getouterframes": ("IC-REFL-003", "reflection", "high", "walks interpreter frames"),
    "inspect.trace": ("IC-REFL-003", "reflection", "medium", "walks interpreter frames"),
    "gc.get_objects": ("IC-REFL-004", "reflection", "high", "enumerates every live object"),
    "gc.get_referrers": ("IC-REFL-004", "reflection", "high", "walks the object graph"),
    "gc.get_referents": ("IC-REFL-004", "reflection", "high", "walks the object graph"),
    "sys.settrace": ("IC-REFL-005", "reflection", "high", "installs an interpreter hook"),
    "sys.setprofile": ("IC-REFL-005", "reflection", "high", "installs an interpreter hook"),
    "sys.addaudithook": ("IC-REFL-005", "reflection", "high", "installs an audit hook"),
    "sys.modules.get": ("IC-REFL-006", "reflection", "medium", "reaches modules through sys.modules"),
    "sys.modules.values": ("IC-REFL-006", "reflection", "medium", "reaches modules through sys.modules"),
    "sys.modules.items": ("IC-REFL-006", "reflection", "medium", "reaches modules through sys.modules"),
    "sys.modules.pop": ("IC-REFL-006", "reflection", "high", "changes sys.modules"),
    "sys.modules.setdefault": ("IC-REFL-006", "reflection", "high", "changes sys.modules"),
    "sys.modules.update": ("IC-REFL-006", "reflection", "high", "changes sys.modules"),
    "builtins.__dict__": ("IC-REFL-001", "reflection", "high", "walks the builtins namespace"),
    "os.environ": ("IC-SECRET-002", "secret_access", "low", "reads the process environment"),
    "os.environb": ("IC-SECRET-002", "secret_access", "low", "reads the process environment"),
    "keyring.get_password": ("IC-SECRET-003", "secret_access", "medium", "reads a secret from the keyring"),
    "keyring.get_credential": ("IC-SECRET-003", "secret_access", "medium", "reads a secret from the keyring"),
    "socket.socket.sendto": ("IC-NET-001", "network", "low", "sends raw network packets"),
    "importlib.util.spec_from_file_location": ("IC-DYN-011", "dynamic_code", "medium", "loads a module from a file path"),
    "importlib.util.module_from_spec": ("IC-DYN-011", "dynamic_code", "medium", "builds a module from a spec"),
    "importlib.machinery.SourceFileLoader": ("IC-DYN-011", "dynamic_code", "medium", "loads a module from a file path"),
    "importlib.machinery.SourcelessFileLoader": ("IC-DYN-011", "dynamic_code", "medium", "loads compiled code"),
    "zipimport.zipimporter": ("IC-DYN-011", "dynamic_code", "medium", "imports code from a zip file"),
    "os.kill": ("IC-MOD-006", "dangerous_module", "medium", "signals other processes"),
    "os.killpg": ("IC-MOD-006", "dangerous_module", "medium", "signals other processes"),
    "os.setuid": ("IC-MOD-006", "dangerous_module", "medium", "changes the process identity"),
    "os.setgid": ("IC-MOD-006", "dangerous_module", "medium", "changes the process identity"),
    "os.seteuid": ("IC-MOD-006", "dangerous_module", "medium", "changes the process identity"),
    "os.setreuid": ("IC-MOD-006", "dangerous_module", "medium", "changes the process identity"),
    "os.setresuid": ("IC-MOD-006", "dangerous_module", "medium", "changes the process identity"),
    "os.chroot": ("IC-MOD-006", "dangerous_module", "medium", "changes the root directory"),
    "os.symlink": ("IC-PATH-014", "sensitive_path", "low", "creates a symbolic link"),
    "os.link": ("IC-PATH-014", "sensitive_path", "low", "creates a hard link"),
    "operator.attrgetter": ("IC-REFL-012", "reflection", "low", "reaches attributes by name"),
    "operator.methodcaller": ("IC-REFL-012", "reflection", "low", "calls methods by name"),
}

# Methods that run programs or code, whatever object they are called on (the receiver could not be
# resolved: `A.x.system('id')` where `A.x = __import__('os')`).
DANGEROUS_METHOD_NAMES = frozenset({
    "system", "popen", "popen2", "popen3", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnvp", "spawnvpe", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
    "fork_exec", "forkpty", "posix_spawn", "posix_spawnp", "getoutput", "getstatusoutput", "check_output",
    "check_call", "Popen", "run_cell", "run_line_magic", "run_cell_magic", "system_raw", "system_piped",
})
# Calls of these resolved names are fine even though the method name is in the list above.
SAFE_METHOD_CALLS = frozenset({"platform.system"})

# Any attribute of these modules (or the module itself) is flagged when referenced.
DANGEROUS_PREFIXES: dict[str, Rule] = {
    "subprocess": ("IC-SHELL-001", "shell", "high", "runs programs through subprocess"),
    "os.exec": _PROC_EXEC,  # execv, execve, execlp ...
    "os.spawn": _PROC_EXEC,  # spawnv, spawnlp ...
    "os.posix_spawn": _PROC_EXEC,
    "_posixsubprocess": _FORK_EXEC,
    "posix.system": _SHELL_CALL,
    "posix.exec": _PROC_EXEC,
    "posix.fork": _PROC_EXEC,
    "posix.posix_spawn": _PROC_EXEC,
    "pty": _PTY,
    "pexpect": ("IC-SHELL-006", "shell", "high", "drives programs through pexpect"),
    "sh.": ("IC-SHELL-006", "shell", "high", "runs programs through the sh package"),
    "plumbum": ("IC-SHELL-006", "shell", "high", "runs programs through plumbum"),
    "commands": _SHELL_CALL,
    "ctypes": ("IC-MOD-001", "dangerous_module", "high", "uses ctypes (calls native code, bypasses Python checks)"),
    "_ctypes": ("IC-MOD-001", "dangerous_module", "high", "uses ctypes (calls native code, bypasses Python checks)"),
    "cffi": ("IC-MOD-002", "dangerous_module", "high", "uses cffi (calls native code)"),
}

# Imports flagged even when nothing from the module is used in the cell.
DANGEROUS_IMPORTS: dict[str, Rule] = {
    "subprocess": ("IC-SHELL-007", "shell", "medium", "imports subprocess"),
    "pty": _PTY,
    "pexpect": ("IC-SHELL-006", "shell", "high", "imports pexpect"),
    "sh": ("IC-SHELL-006", "shell", "high", "imports the sh package"),
    "plumbum": ("IC-SHELL-006", "shell", "high", "imports plumbum"),
    "_posixsubprocess": _FORK_EXEC,
    "posix": ("IC-MOD-003", "dangerous_module", "high", "imports posix (os internals, bypasses os-level checks)"),
    "nt": ("IC-MOD-003", "dangerous_module", "high", "imports nt (os internals)"),
    "ctypes": ("IC-MOD-001", "dangerous_module", "high", "imports ctypes (calls native code, bypasses Python checks)"),
    "_ctypes": ("IC-MOD-001", "dangerous_module", "high", "imports _ctypes"),
    "cffi": ("IC-MOD-002", "dangerous_module", "high", "imports cffi (calls native code)"),
    "mmap": ("IC-MOD-004", "dangerous_module", "medium", "imports mmap (raw memory mapping)"),
    "fcntl": ("IC-MOD-005", "dangerous_module", "low", "imports fcntl"),
    "resource": ("IC-MOD-005", "dangerous_module", "low", "imports resource (changes process limits)"),
    "code": ("IC-DYN-005", "dynamic_code", "medium", "imports code (embedded interpreter)"),
    "codeop": ("IC-DYN-005", "dynamic_code", "medium", "imports codeop"),
    "runpy": ("IC-DYN-005", "dynamic_code", "medium", "imports runpy"),
    "importlib": ("IC-DYN-007", "dynamic_code", "low", "imports importlib"),
    "builtins": ("IC-REFL-007", "reflection", "low", "imports builtins"),
    "keyring": ("IC-SECRET-003", "secret_access", "medium", "imports keyring"),
    "socket": ("IC-NET-001", "network", "low", "imports socket (raw network access)"),
    "smtplib": ("IC-NET-002", "network", "low", "imports smtplib (sends mail)"),
    "ftplib": ("IC-NET-002", "network", "low", "imports ftplib"),
    "telnetlib": ("IC-NET-002", "network", "low", "imports telnetlib"),
    "paramiko": ("IC-NET-002", "network", "medium", "imports paramiko (SSH client)"),
    "dns": ("IC-NET-002", "network", "low", "imports dnspython"),
}

REFLECTION_ATTRS: dict[str, str] = {
    "__subclasses__": "high",
    "__globals__": "high",
    "__builtins__": "high",
    "__code__": "high",
    "__closure__": "medium",
    "__mro__": "medium",
    "__bases__": "medium",
    "__base__": "medium",
    "__getattribute__": "medium",
    "__reduce__": "medium",
    "__reduce_ex__": "medium",
    "__loader__": "medium",
    "__spec__": "low",
    "__import__": "high",
    "gi_frame": "high",
    "gi_code": "high",
    "cr_frame": "high",
    "ag_frame": "high",
    "f_back": "high",
    "f_globals": "high",
    "f_locals": "high",
    "f_builtins": "high",
    "f_code": "medium",
    "tb_frame": "high",
    "func_globals": "high",
    "co_code": "high",
}

SHELL_IPYTHON_METHODS = {"system", "getoutput", "system_raw", "system_piped"}
CODE_IPYTHON_METHODS = {"run_cell", "run_cell_async", "ex", "ev", "run_code", "run_ast_nodes", "safe_execfile",
                        "safe_execfile_ipy", "safe_run_module", "run_line_magic", "run_cell_magic", "magic",
                        "push", "user_ns", "user_global_ns", "kernel", "set_custom_exc", "register_magic_function",
                        "events"}

# Deserialisers: (id, severity, message). *_loads of bytes is worse than loading a local file.
DESERIALIZERS: dict[str, tuple[str, str, str]] = {
    "pickle.loads": ("IC-DESER-001", "high", "unpickles bytes (runs code chosen by whoever made them)"),
    "pickle.load": ("IC-DESER-002", "low", "unpickles a file (runs code if the file is untrusted)"),
    "pickle.Unpickler": ("IC-DESER-002", "low", "unpickles a file (runs code if the file is untrusted)"),
    "_pickle.loads": ("IC-DESER-001", "high", "unpickles bytes"),
    "_pickle.load": ("IC-DESER-002", "low", "unpickles a file"),
    "cPickle.loads": ("IC-DESER-001", "high", "unpickles bytes"),
    "cPickle.load": ("IC-DESER-002", "low", "unpickles a file"),
    "dill.loads": ("IC-DESER-001", "high", "unpickles bytes with dill"),
    "dill.load": ("IC-DESER-002", "low", "unpickles a file with dill"),
    "cloudpickle.loads": ("IC-DESER-001", "high", "unpickles bytes with cloudpickle"),
    "cloudpickle.load": ("IC-DESER-002", "low", "unpickles a file with cloudpickle"),
    "marshal.loads": ("IC-DESER-003", "high", "loads marshalled code objects"),
    "marshal.load": ("IC-DESER-003", "high", "loads marshalled code objects"),
    "joblib.load": ("IC-DESER-002", "low", "loads a joblib pickle (runs code if the file is untrusted)"),
    "sklearn.externals.joblib.load": ("IC-DESER-002", "low", "loads a joblib pickle"),
    "pandas.read_pickle": ("IC-DESER-002", "low", "reads a pickle (runs code if the file is untrusted)"),
    "shelve.open": ("IC-DESER-002", "low", "opens a shelve (pickle) database"),
    "yaml.unsafe_load": ("IC-DESER-004", "high", "loads YAML with arbitrary Python objects"),
    "yaml.unsafe_load_all": ("IC-DESER-004", "high", "loads YAML with arbitrary Python objects"),
    "jsonpickle.decode": ("IC-DESER-001", "high", "decodes jsonpickle (runs code)"),
}

_UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}


def is_unsafe_yaml_loader(name: str | None) -> bool:
    if not name:
        return True
    return name.rsplit(".", 1)[-1] in _UNSAFE_YAML_LOADERS


# Names whose calls send data off the machine (HTTP, raw sockets, DNS, mail ...).
NETWORK_SINK_PREFIXES: tuple[str, ...] = (
    "requests.",
    "urllib.request.",
    "urllib3.",
    "http.client.",
    "httpx.",
    "aiohttp.",
    "socket.",
    "smtplib.",
    "ftplib.",
    "telnetlib.",
    "dns.",
    "paramiko.",
    "xmlrpc.client.",
    "websocket.",
    "websockets.",
    "webbrowser.",
    "pycurl.",
    "subprocess.",
    "os.system",
    "os.popen",
    "asyncio.open_connection",
)
NETWORK_SINK_METHODS = {"send", "sendall", "sendto", "sendmsg", "request", "post", "put", "patch", "urlopen",
                        "sendmail", "send_message", "putrequest", "putheader", "connect", "connect_ex",
                        "getaddrinfo", "gethostbyname", "gethostbyname_ex", "resolve", "query", "upload",
                        "storbinary", "storlines", "urlretrieve"}

TAINT_SOURCES = {"os.environ", "os.environb", "os.getenv", "os.getenvb", "keyring.get_password",
                 "keyring.get_credential", "dotenv.dotenv_values", "dotenv.load_dotenv", "getpass.getpass"}

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASS(WORD|WD)?|CRED|AUTH|PRIVATE|SESSION|COOKIE|BEARER)", re.I)

# Secret-bearing and persistence paths, matched against NFKC-normalised string literals.
SENSITIVE_PATHS: list[tuple[str, str, str, re.Pattern[str]]] = [
    (pid, sev, msg, re.compile(rx))
    for pid, sev, msg, rx in [
        ("IC-PATH-001", "high", "SSH keys and config", r"(^|[/~])\.ssh(/|$)|(^|/)(id_rsa|id_ed25519|id_ecdsa|id_dsa)(\.pub)?$|authorized_keys"),
        ("IC-PATH-002", "high", "cloud credentials", r"(^|[/~])\.(aws|azure|oci)(/|$)|\.config/gcloud|application_default_credentials|\.boto$|\.s3cfg"),
        ("IC-PATH-003", "high", "credential files", r"(^|[/~])(\.netrc|_netrc|\.pgpass|\.git-credentials|\.vault-token|\.npmrc|\.pypirc|\.my\.cnf)$|(^|[/~])\.(kube|gnupg|docker)(/|$)"),
        ("IC-PATH-004", "high", "process memory or environment", r"/proc/(self|thread-self|\d+|\*|[^/]*)/(environ|mem|maps|cmdline|fd|root|cwd|task)"),
        ("IC-PATH-005", "high", "system credential stores", r"^/etc/(shadow|gshadow|sudoers)|^/etc/ssh/|/var/run/secrets|/run/secrets"),
        ("IC-PATH-006", "high", "Jupyter runtime (server tokens, kernel keys)", r"jupyter/runtime|jpserver-[\w.-]*\.(json|html)|(^|/)kernel-[\w-]+\.json$|\.local/share/jupyter"),
        ("IC-PATH-007", "high", "Iron Cage configuration, policies, secrets or audit", r"(^|[/~.])ironcage(/|$)|\.ironcage(/|$)|ironcage[-_](audit|secrets|policies)"),
        ("IC-PATH-008", "high", "IPython/Jupyter startup and config (persistence)", r"\.ipython/|ipython_(kernel_)?config\.py|jupyter_\w*config\.(py|json)|(^|/)startup/[^/]*\.(py|ipy)$|\.jupyter(/|$)"),
        ("IC-PATH-009", "high", "Python import path (persistence)", r"site-packages|dist-packages|sitecustomize|usercustomize|(^|/)[^/\s]+\.pth$"),
        ("IC-PATH-010", "high", "shell start-up files (persistence)", r"(^|[/~])\.(bashrc|bash_profile|bash_login|bash_logout|profile|zshrc|zprofile|zshenv|xprofile|xinitrc)$|^/etc/(profile|bash\.bashrc|environment)"),
        ("IC-PATH-011", "high", "scheduled jobs and services (persistence)", r"crontab|/etc/cron|/var/spool/cron|\.config/(systemd|autostart)|^/etc/systemd|^/etc/init\.d|^/etc/ld\.so\.preload|\.git/hooks"),
        ("IC-PATH-012", "medium", "account database", r"^/etc/(passwd|group)$"),
        ("IC-PATH-013", "medium", "dotenv secrets file", r"(^|/)\.env(\.[\w-]+)?$"),
    ]
]

# Bare path components that are only ever used to reach secrets (Path.home() / ".ssh").
SENSITIVE_COMPONENTS: dict[str, str] = {
    ".ssh": "IC-PATH-001", ".aws": "IC-PATH-002", ".azure": "IC-PATH-002", ".netrc": "IC-PATH-003",
    ".pgpass": "IC-PATH-003", ".git-credentials": "IC-PATH-003", ".kube": "IC-PATH-003",
    ".gnupg": "IC-PATH-003", ".docker": "IC-PATH-003", ".bashrc": "IC-PATH-010", ".profile": "IC-PATH-010",
    ".zshrc": "IC-PATH-010", ".bash_profile": "IC-PATH-010", "environ": "IC-PATH-004",
    ".ipython": "IC-PATH-008", ".jupyter": "IC-PATH-008", "site-packages": "IC-PATH-009",
    "sitecustomize.py": "IC-PATH-009", "authorized_keys": "IC-PATH-001", "id_rsa": "IC-PATH-001",
    ".ironcage": "IC-PATH-007", "ironcage": "IC-PATH-007",
}

# IPython line/cell magics whose argument or body is Python code run in the kernel.
PYTHON_BODY_MAGICS = {"time", "timeit", "prun", "capture", "debug", "memit", "mprun", "lprun", "snakeviz",
                      "pdb", "tensorflow_version"}
# Magics that run a shell or another interpreter.
SHELL_MAGICS = {"system", "sx", "bash", "sh", "script", "zsh", "perl", "ruby", "python", "python2", "python3",
                "pypy", "!", "alias", "unalias", "rehashx",
                # IPython's default aliases run shell commands
                "cat", "cp", "ldir", "lf", "lk", "ll", "ls", "lx", "mkdir", "mv", "rm", "rmdir", "clear",
                "less", "man", "more"}

PROMPT_INJECTION = re.compile(
    r"ignore\s+(all\s+|any\s+|the\s+)?(previous|prior|above|earlier|preceding)\s+(instructions|prompts?|rules|directions)"
    r"|disregard\s+(all\s+|any\s+|the\s+)?(previous|prior|above|earlier|your)\s+\w*\s*(instructions|prompts?|rules|guidelines)"
    r"|forget\s+(all\s+|everything\s+)?(previous|prior|your)\s+(instructions|rules)"
    r"|you\s+are\s+now\s+(in\s+)?(dan|developer\s+mode|an?\s+unrestricted|jailbroken|free)"
    r"|new\s+(system\s+)?instructions\s*:"
    r"|<\|im_start\|>|<\|im_end\|>|<\|system\|>|\[/?inst\]|<<sys>>|<\|endoftext\|>"
    r"|^\s*#{2,}\s*(system|instruction)s?\s*:?"
    r"|\b(system|developer)\s+prompt\s*:"
    r"|do\s+not\s+(tell|inform|alert|show)\s+the\s+(user|human|operator)"
    r"|without\s+(asking|telling|notifying)\s+the\s+(user|human)"
    r"|(override|bypass|disable|turn\s+off)\s+(the\s+|all\s+|your\s+)?(safety|security|guardrails?|policy|policies|firewall|iron\s*cage|sandbox)"
    r"|\bjailbreak"
    r"|(assistant|agent|ai|llm|model)\s*[:,]?\s*(you\s+must|always|now)\s+(run|execute|send|upload|print|reveal)"
    r"|(reveal|print|send|exfiltrate|upload)\s+(your|the)\s+(system\s+prompt|api[\s_-]?keys?|secrets?|credentials|tokens?)",
    re.IGNORECASE | re.MULTILINE,
)

# Bidirectional overrides and invisible characters (Trojan Source, hidden instructions).
INVISIBLE_CHARS = re.compile("[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2060-\u2064\ufeff\U000e0000-\U000e007f]")
