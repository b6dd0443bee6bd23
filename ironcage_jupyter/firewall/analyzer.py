"""AST rules of the input firewall.

The analyzer walks a cell's AST once. It resolves names through imports and simple assignments (so
`import subprocess as s; s.run` and `f = os.system` are seen), folds literal payloads (decode.py) and
re-screens them, records magics and shell escapes that IPython's transformer turned into `get_ipython()`
calls, and follows environment/secret-derived values into network calls (a single forward pass: values
passed through user functions are not followed — see docs/firewall.md).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .decode import Folded, fold, int_list, nfkc
from .findings import Finding, MagicUse, PathUse
from .shellparse import shell_commands
from .tables import (
    CODE_IPYTHON_METHODS,
    DANGEROUS_IMPORTS,
    DANGEROUS_METHOD_NAMES,
    DANGEROUS_NAMES,
    DANGEROUS_PREFIXES,
    DESERIALIZERS,
    NETWORK_SINK_METHODS,
    NETWORK_SINK_PREFIXES,
    PYTHON_BODY_MAGICS,
    REFLECTION_ATTRS,
    SAFE_METHOD_CALLS,
    SECRET_NAME,
    SENSITIVE_COMPONENTS,
    SENSITIVE_PATHS,
    SHELL_IPYTHON_METHODS,
    SHELL_MAGICS,
    TAINT_SOURCES,
    Rule,
    is_unsafe_yaml_loader,
)

BUILTIN_NAMES = frozenset(dir(builtins))
# Roots that are common variable names: only treated as modules when imported in the same cell.
AMBIGUOUS_ROOTS = frozenset({"sh", "code", "commands", "plumbum", "dns", "nt", "posix", "resource", "pty"})
PARTIAL_PREFIXES = frozenset({"os.exec", "os.spawn", "os.posix_spawn", "posix.exec", "posix.fork",
                              "posix.posix_spawn", "posix.system"})
DYNAMIC_CODE_FUNCS = frozenset({"eval", "exec", "compile", "execfile"})
IMPORT_FUNCS = frozenset({"__import__", "importlib.import_module", "importlib.__import__"})
ENV_DUMP_FUNCS = frozenset({"print", "dict", "str", "repr", "list", "tuple", "set", "sorted", "json.dumps",
                            "json.dump", "pprint.pprint", "pprint.pformat", "display", "IPython.display.display",
                            "vars"})
SECRET_PATH_IDS = frozenset({"IC-PATH-001", "IC-PATH-002", "IC-PATH-003", "IC-PATH-004", "IC-PATH-005",
                             "IC-PATH-006", "IC-PATH-007", "IC-PATH-013"})
_PATH_QUICK = re.compile(
    r"ssh|aws|azure|oci|gcloud|credential|boto|s3cfg|netrc|pgpass|git-|vault|npmrc|pypirc|my\.cnf|kube|gnupg"
    r"|docker|proc/|/etc/|secrets|jupyter|jpserver|kernel-|ironcage|ipython|startup|site-packages"
    r"|dist-packages|customize|\.pth|bash|profile|zsh|xinit|cron|systemd|autostart|init\.d|ld\.so|hooks|\.env"
)
_TAINT_HINT = re.compile(
    r"environ|getenv|keyring|getpass|dotenv|ssh|aws|azure|oci|gcloud|credential|boto|s3cfg|netrc|pgpass|git-cred"
    r"|vault|npmrc|pypirc|my\.cnf|kube|gnupg|docker|proc/|/etc/|secrets|jupyter|jpserver|kernel-|ironcage|\.env"
    r"|id_rsa|id_ed25519|id_ecdsa|id_dsa|authorized_keys|getattr|__import__|import_module|vars|__dict__|modules"
)
_TAINT_LAST = frozenset({name.rsplit(".", 1)[-1] for name in TAINT_SOURCES} | {"environ", "environb"})
_PREFIX_ROOTS = frozenset(p.split(".")[0] for p in DANGEROUS_PREFIXES)
_OPTION_TOKEN = re.compile(r"^\s*-\w+(\s+\d+(\.\d+)?)?\s+")
_BRACE_EXPR = re.compile(r"\{([^{}\n]+)\}")
_MAX_STRING_FOR_PATHS = 4096

# nested(code, line, transform, fixed): fixed=True pins every finding to `line`; otherwise body line k -> line + k.
NestedScreen = Callable[[str, int, bool, bool], tuple[list[Finding], list[MagicUse], list[PathUse]]]


@dataclass
class AnalyzerState:
    findings: list[Finding] = field(default_factory=list)
    magics: list[MagicUse] = field(default_factory=list)
    paths: list[PathUse] = field(default_factory=list)
    seen: set[tuple[str, int]] = field(default_factory=set)


class Analyzer(ast.NodeVisitor):
    """One pass over a parsed cell. `nested(code, line, transform)` screens payloads and magic bodies."""

    def __init__(self, nested: NestedScreen | None, *, line_offset: int = 0, fixed_line: int | None = None,
                 max_decode_depth: int = 3, depth: int = 0, source: str | None = None) -> None:
        self.nested = nested
        # Taint needs a source (environment, keyring, secret file) somewhere in the cell; most cells have
        # none, and then no value can be tainted (None: unknown source text, always check).
        if source is not None and not source.isascii():
            source = nfkc(source)
        self.taint_possible = source is None or _TAINT_HINT.search(source) is not None
        self.line_offset = line_offset
        self.fixed_line = fixed_line
        self.max_decode_depth = max_decode_depth
        self.depth = depth
        self.state = AnalyzerState()
        self.aliases: dict[str, str] = {}
        self.imported_roots: set[str] = set()
        self.star_modules: list[str] = []
        self.consts: dict[str, Folded | list[int]] = {}
        self.tainted: set[str] = set()
        self._called: set[int] = set()  # ids of Name nodes that are the function of a call

    # ---------------------------------------------------------------- helpers
    def line_of(self, node: ast.AST) -> int:
        if self.fixed_line is not None:
            return self.fixed_line
        return getattr(node, "lineno", 1) + self.line_offset

    def add(self, fid: str, category: str, severity: str, line: int, message: str) -> None:
        key = (fid, line)
        if key in self.state.seen:
            return
        self.state.seen.add(key)
        self.state.findings.append(Finding(fid, category, severity, line, message))  # type: ignore[arg-type]

    def add_rule(self, rule: Rule, node: ast.AST, subject: str) -> None:
        fid, category, severity, message = rule
        self.add(fid, category, severity, self.line_of(node), f"{subject}: {message}")

    def qual(self, node: ast.AST, depth: int = 0) -> str | None:
        """Dotted name an expression refers to (`s.run` -> 'subprocess.run'), or None if unknown."""
        if depth > 30:
            return None
        if isinstance(node, ast.Name):
            name = node.id
            if name in self.aliases:
                return self.aliases[name]
            if name == "__builtins__":
                return "builtins"
            for module in self.star_modules:
                candidate = f"{module}.{name}"
                if self._rule_for(candidate) is not None:
                    return candidate
            return name
        if isinstance(node, ast.Attribute):
            base = self.qual(node.value, depth + 1)
            if base is None:
                return None
            if node.attr == "__self__" and base in BUILTIN_NAMES:
                return "builtins"
            return self.canonical(f"{base}.{node.attr}")
        if isinstance(node, ast.Call):
            func = self.qual(node.func, depth + 1)
            if func is None:
                return None
            if func in IMPORT_FUNCS and node.args:
                target = self.fold(node.args[0], self.consts)
                if target is not None and isinstance(target.value, str):
                    module = nfkc(target.value)
                    return module.split(".")[0] if func == "__import__" else module
                return None
            if func == "getattr" and len(node.args) >= 2:
                base = self.qual(node.args[0], depth + 1)
                attr = self.fold(node.args[1], self.consts)
                if base is not None and attr is not None and isinstance(attr.value, str):
                    return self.canonical(f"{base}.{nfkc(attr.value)}")
                return None
            if func in ("get_ipython", "IPython.get_ipython", "IPython.core.getipython.get_ipython"):
                return "get_ipython()"
            if func == "vars" and node.args:
                base = self.qual(node.args[0], depth + 1)
                return f"{base}.__dict__" if base else None
            if func in ("globals", "locals"):
                return "globals()"
            return None
        if isinstance(node, ast.Subscript):
            base = self.qual(node.value, depth + 1)
            key = self.fold(node.slice, self.consts)
            if base is None or key is None or not isinstance(key.value, str):
                return None
            name = nfkc(key.value)
            if base == "sys.modules":
                return name
            if base.endswith(".__dict__"):
                return self.canonical(f"{base[: -len('.__dict__')]}.{name}")
            if base in ("builtins", "globals()"):
                return "builtins" if name == "__builtins__" else self.canonical(f"builtins.{name}")
            return None
        return None

    def fold(self, node: ast.AST, env: object = None) -> Folded | None:
        return fold(node, self.consts, 0, self.qual)

    @staticmethod
    def canonical(name: str) -> str:
        if name.startswith("builtins.") and name[9:] in BUILTIN_NAMES:
            return name[9:]
        if name.startswith("__builtins__."):
            return name[13:]
        if name.startswith("posix.") and not name.startswith(("posix.exec", "posix.fork", "posix.system",
                                                              "posix.posix_spawn")):
            return "os." + name[6:]
        if name.startswith("pd."):
            return "pandas." + name[3:]
        if name.startswith("np."):
            return "numpy." + name[3:]
        return name

    def _rule_for(self, name: str) -> Rule | None:
        rule = DANGEROUS_NAMES.get(name)
        if rule is not None:
            return rule
        root = name.split(".", 1)[0]
        if root not in _PREFIX_ROOTS:
            return None
        if root in AMBIGUOUS_ROOTS and root not in self.imported_roots:
            return None
        for prefix, prefix_rule in DANGEROUS_PREFIXES.items():
            bare = prefix.rstrip(".")
            if name == bare or name.startswith(bare + ".") or (prefix in PARTIAL_PREFIXES and name.startswith(prefix)):
                return prefix_rule
        return None

    def check_name(self, name: str | None, node: ast.AST) -> None:
        if not name:
            return
        rule = self._rule_for(name)
        if rule is not None:
            self.add_rule(rule, node, name)

    # ---------------------------------------------------------------- taint
    def is_tainted(self, node: ast.AST) -> bool:
        if not self.taint_possible:
            return False
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                if sub.id in self.tainted:
                    return True
                if sub.id in self.aliases or sub.id in _TAINT_LAST:
                    q = self.qual(sub)
                    if q is not None and (q in TAINT_SOURCES or q.startswith("os.environ")):
                        return True
            elif isinstance(sub, ast.Attribute):
                if sub.attr in _TAINT_LAST:
                    q = self.qual(sub)
                    if q is not None and (q in TAINT_SOURCES or q.startswith("os.environ")):
                        return True
            elif isinstance(sub, ast.Subscript) or (
                    isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("getattr", "vars")):
                # getattr(os, 'env' + 'iron'), vars(os)['environ'], sys.modules['os'].environ ...
                q = self.qual(sub)
                if q is not None and (q in TAINT_SOURCES or q.startswith("os.environ")):
                    return True
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and len(sub.value) < _MAX_STRING_FOR_PATHS:
                text = nfkc(sub.value)
                if _PATH_QUICK.search(text):
                    for pid, _sev, _msg, rx in SENSITIVE_PATHS:
                        if pid in SECRET_PATH_IDS and rx.search(text):
                            return True
        return False

    def _bind(self, target: ast.AST, value: ast.AST | None, tainted: bool) -> None:
        if isinstance(target, ast.Name):
            name = target.id
            if tainted:
                self.tainted.add(name)
            else:
                self.tainted.discard(name)
            self.aliases.pop(name, None)
            self.consts.pop(name, None)
            if value is None:
                return
            if isinstance(value, ast.Name | ast.Attribute | ast.Call | ast.Subscript):
                q = self.qual(value)
                if q is not None and (q != name) and (
                    self._rule_for(q) is not None or "." in q or q in ("get_ipython()", "builtins", "globals()")
                    or q in DYNAMIC_CODE_FUNCS or q in IMPORT_FUNCS or q in ("getattr", "setattr", "open")
                    or (isinstance(value, ast.Call) and self.qual(value.func) in IMPORT_FUNCS)
                ):
                    self.aliases[name] = q
            folded = self.fold(value, self.consts)
            if folded is not None:
                self.consts[name] = folded
            else:
                ints = int_list(value, self.consts)
                if ints is not None:
                    self.consts[name] = ints
        elif isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts) else None
            for i, elt in enumerate(target.elts):
                self._bind(elt, values[i] if values else None, tainted)
        elif isinstance(target, ast.Starred):
            self._bind(target.value, None, tainted)

    # ---------------------------------------------------------------- statements
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = alias.name
            root = module.split(".")[0]
            self.imported_roots.add(root)
            if alias.asname:
                self.aliases[alias.asname] = module
            else:
                self.aliases.pop(root, None)
            self.check_import(module, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            return
        root = module.split(".")[0]
        self.imported_roots.add(root)
        self.check_import(module, node)
        for alias in node.names:
            if alias.name == "*":
                self.star_modules.append(module)
                continue
            full = self.canonical(f"{module}.{alias.name}")
            self.aliases[alias.asname or alias.name] = full
            self.check_import(full, node)
            self.check_name(full, node)
            if alias.name in REFLECTION_ATTRS:
                self.add("IC-REFL-001", "reflection", REFLECTION_ATTRS[alias.name], self.line_of(node),
                         f"imports {alias.name}")

    def check_import(self, module: str, node: ast.AST) -> None:
        rule = DANGEROUS_IMPORTS.get(module) or DANGEROUS_IMPORTS.get(module.split(".")[0])
        if rule is not None:
            self.add_rule(rule, node, f"import {module}")
        else:
            self.check_name(module, node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        tainted = self.is_tainted(node.value)
        for target in node.targets:
            self._visit_store_target(target)
            self._bind(target, node.value, tainted)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        # annotations are evaluated at module level: `In[1]: os.system('id')` runs the call
        self.visit(node.annotation)
        self._visit_store_target(node.target)
        if node.value is not None:
            self.visit(node.value)
            self._bind(node.target, node.value, self.is_tainted(node.value))

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._visit_store_target(node.target)
        if isinstance(node.target, ast.Name) and self.is_tainted(node.value):
            self.tainted.add(node.target.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target, node.value, self.is_tainted(node.value))

    def _visit_store_target(self, target: ast.AST) -> None:
        # Attribute/subscript targets can still reach dangerous objects (sys.modules['x'] = ...).
        if isinstance(target, ast.Attribute | ast.Subscript):
            self.visit(target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._visit_store_target(node.target)
        self._check_env_dump(node.iter, node)
        self._bind(node.target, None, self.is_tainted(node.iter))
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind(item.optional_vars, None, self.is_tainted(item.context_expr))
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With  # type: ignore[assignment]

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self.visit(node.iter)
        self._check_env_dump(node.iter, node.iter)
        if self.is_tainted(node.iter):
            self._bind(node.target, None, True)
        for cond in node.ifs:
            self.visit(cond)

    # ---------------------------------------------------------------- expressions
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            q = self.qual(node)
            if q == "getattr" and id(node) not in self._called:
                self.add("IC-REFL-012", "reflection", "medium", self.line_of(node),
                         "passes getattr around as a value (attribute walks by name)")
            self.check_name(q, node)
            if node.id == "__builtins__":
                self.add("IC-REFL-001", "reflection", "high", self.line_of(node), "reaches __builtins__")
            elif q in ("__import__",):
                self.add("IC-DYN-008", "dynamic_code", "low", self.line_of(node), "uses __import__")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr in REFLECTION_ATTRS:
            self.add("IC-REFL-001", "reflection", REFLECTION_ATTRS[attr], self.line_of(node), f"reaches .{attr}")
        q = self.qual(node)
        if attr == "__dict__":
            base = self.qual(node.value)
            if base is not None and (base in self.imported_roots or base in ("os", "sys", "builtins", "subprocess",
                                                                             "posix", "importlib", "ctypes")):
                self.add("IC-REFL-001", "reflection", "high", self.line_of(node), f"walks {base}.__dict__")
        elif attr == "__self__" and q == "builtins":
            self.add("IC-REFL-001", "reflection", "high", self.line_of(node), "reaches builtins via __self__")
        if q is not None and q.startswith("get_ipython()."):
            method = q.split(".", 1)[1].split(".")[0]
            if method in ("kernel", "user_ns", "user_global_ns", "set_custom_exc", "events",
                          "register_magic_function", "magics_manager", "input_transformers_post",
                          "input_transformers_cleanup", "ast_transformers"):
                self.add("IC-REFL-009", "reflection", "high", self.line_of(node),
                         f"reaches IPython internals ({method})")
        self.check_name(q, node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        base = self.qual(node.value)
        if base == "sys.modules":
            store = not isinstance(node.ctx, ast.Load)
            self.add("IC-REFL-006", "reflection", "high" if store else "medium", self.line_of(node),
                     "replaces a module in sys.modules" if store else "reaches a module through sys.modules")
        elif base == "os.environ" or base == "os.environb":
            key = self.fold(node.slice, self.consts)
            if key is not None and isinstance(key.value, str) and SECRET_NAME.search(key.value) \
                    and isinstance(node.ctx, ast.Load):
                self.add("IC-SECRET-001", "secret_access", "medium", self.line_of(node),
                         f"reads secret-looking environment variable {key.value!r}")
        q = self.qual(node)
        if q is not None:
            self.check_name(q, node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.check_string(node.value, node)
        elif isinstance(node.value, bytes) and len(node.value) < _MAX_STRING_FOR_PATHS:
            self.check_string(node.value.decode("latin-1"), node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add):
            folded = self.fold(node, self.consts)
            if folded is not None and isinstance(folded.value, str):
                self.check_string(folded.value, node)
        elif isinstance(node.op, ast.Div):
            # Path.home() / ".ssh" / "id_rsa"
            parts = [p.value for p in ast.walk(node) if isinstance(p, ast.Constant) and isinstance(p.value, str)]
            if parts:
                self.check_string("/".join(parts), node)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        folded = self.fold(node, self.consts)
        if folded is not None and isinstance(folded.value, str):
            self.check_string(folded.value, node)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None and self.qual(value) in ("os.environ", "os.environb"):
                self.add("IC-SECRET-004", "secret_access", "medium", self.line_of(node),
                         "copies the whole process environment")
        self.generic_visit(node)

    def check_string(self, raw: str, node: ast.AST) -> None:
        if len(raw) > _MAX_STRING_FOR_PATHS:
            return
        text = nfkc(raw)
        line = self.line_of(node)
        stripped = text.strip()
        if stripped in REFLECTION_ATTRS:
            self.add("IC-REFL-002", "reflection", REFLECTION_ATTRS[stripped], line, f"names {stripped} in a string")
        component = SENSITIVE_COMPONENTS.get(stripped)
        if component is not None:
            self.add(component, "sensitive_path", "high", line, f"names {stripped!r}")
        if _PATH_QUICK.search(text):
            for pid, severity, message, rx in SENSITIVE_PATHS:
                if rx.search(text):
                    self.add(pid, "sensitive_path", severity, line, f"{message}: {text[:80]!r}")
        if len(stripped) < 1024 and (stripped.startswith(("/", "~")) or "/" in stripped) \
                and "://" not in stripped and not any(c in stripped for c in "\n\t\r\x00"):
            # relative paths too: `link/id_rsa` may go through a symlink in the workspace
            self.state.paths.append(PathUse(stripped, line))

    # ---------------------------------------------------------------- calls
    def visit_Call(self, node: ast.Call) -> None:
        self._called.add(id(node.func))
        q = self.qual(node.func)
        line = self.line_of(node)
        if q is not None:
            if q in DYNAMIC_CODE_FUNCS:
                self._dynamic_code(q, node)
            elif q in IMPORT_FUNCS:
                self._dynamic_import(q, node)
            elif q in ("getattr", "setattr", "delattr", "hasattr"):
                self._reflective_attr(q, node)
            elif q.startswith("get_ipython()."):
                self._ipython_call(q[len("get_ipython()."):], node)
            elif q in DESERIALIZERS:
                fid, severity, message = DESERIALIZERS[q]
                self.add(fid, "deserialization", severity, line, f"{q}: {message}")
            elif q in ("yaml.load", "yaml.load_all"):
                loader = None
                if len(node.args) > 1:
                    loader = self.qual(node.args[1])
                for kw in node.keywords:
                    if kw.arg == "Loader":
                        loader = self.qual(kw.value)
                if is_unsafe_yaml_loader(loader):
                    self.add("IC-DESER-004", "deserialization", "medium", line,
                             f"{q} without SafeLoader can build arbitrary Python objects")
            elif q in ("numpy.load",):
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        self.add("IC-DESER-002", "deserialization", "low", line, "numpy.load with allow_pickle")
            elif q == "torch.load":
                safe = any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                           for kw in node.keywords)
                if not safe:
                    self.add("IC-DESER-002", "deserialization", "low", line, "torch.load without weights_only=True")
            elif q in ("socket.socket", "socket.fromfd", "socket.socketpair"):
                for arg in list(node.args) + [kw.value for kw in node.keywords]:
                    aq = self.qual(arg) or ""
                    if aq.endswith(("AF_PACKET", "SOCK_RAW", "AF_NETLINK")):
                        self.add("IC-NET-003", "dangerous_module", "high", line, f"opens a raw socket ({aq})")
            elif q in ENV_DUMP_FUNCS or q.startswith("os.environ."):
                self._check_env_dump(node, node)
            if q in ("os.getenv", "os.environ.get", "os.getenvb", "os.environ.pop", "os.environ.setdefault") and node.args:
                key = self.fold(node.args[0], self.consts)
                if key is not None and isinstance(key.value, str) and SECRET_NAME.search(key.value):
                    self.add("IC-SECRET-001", "secret_access", "medium", line,
                             f"reads secret-looking environment variable {key.value!r}")
            if not isinstance(node.func, ast.Name | ast.Attribute):
                self.check_name(q, node)
        if isinstance(node.func, ast.Attribute) and node.func.attr in DANGEROUS_METHOD_NAMES and (
                q is None or (self._rule_for(q) is None and q not in SAFE_METHOD_CALLS
                              and not q.startswith("get_ipython()."))):
            self.add("IC-SHELL-010", "shell", "medium", line,
                     f"calls a method named {node.func.attr}() on an object the firewall cannot resolve")
        for fn_name in ("operator.attrgetter", "operator.methodcaller"):
            if q == fn_name:
                for arg in node.args:
                    folded = self.fold(arg)
                    if folded is not None and isinstance(folded.value, str):
                        attr = nfkc(folded.value).split(".")[-1]
                        if attr in DANGEROUS_METHOD_NAMES or attr in REFLECTION_ATTRS or attr in (
                                "__import__", "eval", "exec", "environ"):
                            self.add("IC-REFL-011", "reflection", "high", line, f"{q}({attr!r}) reaches a dangerous name")
        self._check_exfiltration(q, node)
        if q in DYNAMIC_CODE_FUNCS and isinstance(node.func, ast.Name):
            # The call itself was judged above (literal payloads are screened, not flagged as dynamic).
            for child in list(node.args) + list(node.keywords):
                self.visit(child)
            return
        self.generic_visit(node)

    def _check_env_dump(self, expr: ast.AST, node: ast.AST) -> None:
        target = expr
        if isinstance(expr, ast.Call):
            fq = self.qual(expr.func)
            if fq in ("os.environ.items", "os.environ.values", "os.environ.copy", "os.environb.items"):
                self.add("IC-SECRET-004", "secret_access", "medium", self.line_of(node), "reads the whole environment")
                return
            if fq not in ENV_DUMP_FUNCS or not expr.args:
                return
            target = expr.args[0]
        if self.qual(target) in ("os.environ", "os.environb") or (
            isinstance(target, ast.Call) and self.qual(target.func) in ("os.environ.items", "os.environ.copy",
                                                                         "os.environ.values")
        ):
            self.add("IC-SECRET-004", "secret_access", "medium", self.line_of(node), "reads the whole environment")

    def _check_exfiltration(self, q: str | None, node: ast.Call) -> None:
        is_sink = q is not None and q.startswith(NETWORK_SINK_PREFIXES)
        if not is_sink and isinstance(node.func, ast.Attribute) and node.func.attr in NETWORK_SINK_METHODS:
            is_sink = True
        if not is_sink:
            return
        args = list(node.args) + [kw.value for kw in node.keywords]
        if any(self.is_tainted(arg) for arg in args) or (
            isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
            and node.func.value.id in self.tainted
        ):
            self.add("IC-EXFIL-001", "exfiltration", "critical", self.line_of(node),
                     f"sends environment- or secret-derived data over the network ({q or getattr(node.func, 'attr', '?')})")

    def _screen_payload(self, folded: Folded, node: ast.AST, what: str) -> None:
        line = self.line_of(node)
        text = folded.value.decode("utf-8", "replace") if isinstance(folded.value, bytes) else folded.value
        if folded.decoded:
            self.add("IC-DYN-002", "dynamic_code", "high", line,
                     f"{what} of an encoded or obfuscated payload (decoded and re-screened)")
        if self.nested is None or self.depth >= self.max_decode_depth:
            if folded.decoded:
                self.add("IC-DYN-010", "dynamic_code", "high", line, "payload nested too deeply to screen")
            return
        findings, magics, paths = self.nested(text, line, False, True)
        for finding in findings:
            if finding.id == "IC-PARSE-001":
                continue
            self.add(finding.id, finding.category, finding.severity, line, f"(in payload) {finding.message}")
        self.state.magics.extend(magics)
        self.state.paths.extend(paths)

    def _dynamic_code(self, q: str, node: ast.Call) -> None:
        line = self.line_of(node)
        if not node.args:
            self.add("IC-DYN-001", "dynamic_code", "medium", line, f"{q}() of dynamic code")
            return
        folded = self.fold(node.args[0], self.consts)
        if folded is None:
            self.add("IC-DYN-001", "dynamic_code", "medium", line, f"{q}() of a computed value (cannot be screened)")
            return
        self.add("IC-DYN-003", "dynamic_code", "low", line, f"{q}() of a literal (screened)")
        self._screen_payload(folded, node, f"{q}()")

    def _dynamic_import(self, q: str, node: ast.Call) -> None:
        line = self.line_of(node)
        target = self.fold(node.args[0], self.consts) if node.args else None
        if target is None or not isinstance(target.value, str):
            self.add("IC-DYN-004", "dynamic_code", "medium", line, f"{q}() of a computed module name")
            return
        module = nfkc(target.value)
        self.imported_roots.add(module.split(".")[0])
        if target.decoded:
            self.add("IC-DYN-002", "dynamic_code", "high", line, f"{q}() of an obfuscated module name ({module})")
        if q == "__import__":
            self.add("IC-DYN-008", "dynamic_code", "low", line, f"__import__({module!r})")
        self.check_import(module, node)

    def _reflective_attr(self, q: str, node: ast.Call) -> None:
        if len(node.args) < 2:
            return
        line = self.line_of(node)
        base = self.qual(node.args[0])
        attr = self.fold(node.args[1], self.consts)
        if attr is None:
            if base is not None and (base in ("os", "sys", "builtins", "subprocess", "posix", "importlib", "ctypes",
                                              "get_ipython()", "globals()", "pty", "socket", "__builtins__")
                                     or base in self.imported_roots):
                self.add("IC-REFL-008", "reflection", "medium", line, f"{q}({base}, <computed name>)")
            return
        name = nfkc(attr.value) if isinstance(attr.value, str) else ""
        if attr.decoded:
            self.add("IC-DYN-002", "dynamic_code", "high", line, f"{q}() with an obfuscated attribute name ({name!r})")
        if name in REFLECTION_ATTRS:
            self.add("IC-REFL-001", "reflection", REFLECTION_ATTRS[name], line, f"{q}(..., {name!r})")
        if q in ("setattr", "delattr") and base in ("builtins", "sys", "os", "get_ipython()"):
            self.add("IC-REFL-010", "reflection", "high", line, f"{q} on {base}")

    def _ipython_call(self, method: str, node: ast.Call) -> None:
        line = self.line_of(node)
        args = [self.fold(a, self.consts) for a in node.args]
        literal = all(a is not None and isinstance(a.value, str) for a in args) and not node.keywords
        texts = [a.value for a in args if a is not None and isinstance(a.value, str)]
        if method in SHELL_IPYTHON_METHODS:
            if not literal or not texts:
                self.add("IC-SHELL-008", "shell", "high", line, f"get_ipython().{method}() with a computed command")
                self.state.magics.append(MagicUse("!", "shell", line, "", True, ("?",), literal=False))
                return
            command = texts[0]
            self.state.magics.append(MagicUse("!", "shell", line, command, True, shell_commands(command)))
            self._screen_expansions(command, line)
            return
        if method == "run_line_magic" and literal and len(texts) >= 2:
            self._magic(nfkc(texts[0]), "line", texts[1], "", line)
            return
        if method == "run_cell_magic" and literal and len(texts) >= 3:
            self._magic(nfkc(texts[0]), "cell", texts[1], texts[2], line)
            return
        if method in ("run_line_magic", "run_cell_magic", "magic"):
            self.add("IC-SHELL-008", "shell", "high", line, f"get_ipython().{method}() with computed arguments")
            self.state.magics.append(MagicUse("?", "line", line, "", False, (), literal=False))
            return
        if method in CODE_IPYTHON_METHODS:
            self.add("IC-DYN-009", "dynamic_code", "high", line,
                     f"get_ipython().{method}() runs code the firewall of this cell does not see")
            if args and args[0] is not None:
                self._screen_payload(args[0], node, f"get_ipython().{method}()")

    def _magic(self, name: str, kind: Literal["line", "cell"], args: str, body: str, line: int) -> None:
        shell = name in SHELL_MAGICS
        commands: tuple[str, ...] = ()
        if shell:
            if kind == "cell":
                if name in ("script",):
                    interp = args.split()[0] if args.split() else "?"
                    commands = (interp.rsplit("/", 1)[-1],) + shell_commands(body)
                elif name in ("bash", "sh", "zsh"):
                    commands = shell_commands(body)
                else:
                    commands = (name,)
            else:
                commands = shell_commands(args) if name in ("system", "sx") else (name,)
        self.state.magics.append(MagicUse(name, kind, line, args if kind == "line" else (args + "\n" + body)[:400],
                                          shell, commands))
        # IPython expands {expr} and $name in line-magic arguments and shell commands: that is Python code.
        self._screen_expansions(args, line)
        if self.nested is None:
            return
        if name in PYTHON_BODY_MAGICS or name in ("python", "python3", "python2", "pypy", "writefile", "file"):
            if kind == "cell":
                self._merge_nested(body, line, transform=True, offset=True)
                if name == "timeit" and args.strip():
                    self._merge_nested(self._strip_options(args), line, transform=False, offset=False)
            else:
                self._merge_nested(self._strip_options(args), line, transform=False, offset=False)
        if name in ("writefile", "file", "run", "cd", "load", "loadpy", "save", "logstart", "bookmark"):
            target = self._strip_options(args).strip().strip("'\"")
            if target:
                path = target.split()[0] if name != "cd" else target
                self.check_string(path, ast.Constant(value=path, lineno=line - self.line_offset))
                if not path.startswith(("/", "~", "./", "../")):
                    self.state.paths.append(PathUse(path, line))

    @staticmethod
    def _strip_options(args: str) -> str:
        text = args
        for _ in range(8):
            new = _OPTION_TOKEN.sub("", text, count=1)
            if new == text:
                break
            text = new
        return text

    def _merge_nested(self, code: str, line: int, *, transform: bool, offset: bool) -> None:
        if self.nested is None or self.depth >= self.max_decode_depth or not code.strip():
            return
        findings, magics, paths = self.nested(code, line, transform, not offset)
        for finding in findings:
            # A body that does not parse cannot run either (%%time: SyntaxError in the child); for
            # %%writefile it may simply not be Python. Only what parses is worth reporting.
            if finding.id == "IC-PARSE-001":
                continue
            self.add(finding.id, finding.category, finding.severity, finding.line, finding.message)
        self.state.magics.extend(magics)
        self.state.paths.extend(paths)

    def _screen_expansions(self, text: str, line: int) -> None:
        if self.nested is None or self.depth >= self.max_decode_depth:
            return
        for match in _BRACE_EXPR.finditer(text[:10_000]):
            expr = match.group(1)
            findings, magics, paths = self.nested(expr, line, False, True)
            for finding in findings:
                if finding.id == "IC-PARSE-001":
                    continue
                self.add(finding.id, finding.category, finding.severity, line,
                         f"(in {{}} expansion) {finding.message}")
            self.state.magics.extend(magics)
