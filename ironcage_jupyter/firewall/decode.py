"""Constant folding of literal payloads: follows strings through base64 / hex / rot13 / chr lists.

`fold(node, env)` returns the str or bytes value a node evaluates to when it is built only from literals
(and names bound to literals), or None. `Folded.decoded` says whether a decoding step was involved, which
is what turns an `exec` of a literal into an obfuscated payload.
"""

from __future__ import annotations

import ast
import base64
import binascii
import codecs
import unicodedata
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Payloads are re-screened; the limits keep a hostile cell from making the firewall slow.
MAX_PAYLOAD = 200_000
MAX_DEPTH = 24

_B64_FUNCS: dict[str, Any] = {
    "base64.b64decode": base64.b64decode,
    "base64.standard_b64decode": base64.standard_b64decode,
    "base64.urlsafe_b64decode": base64.urlsafe_b64decode,
    "base64.decodebytes": base64.decodebytes,
    "base64.b32decode": base64.b32decode,
    "base64.b16decode": base64.b16decode,
    "base64.a85decode": base64.a85decode,
    "base64.b85decode": base64.b85decode,
    "binascii.a2b_base64": binascii.a2b_base64,
    "binascii.unhexlify": binascii.unhexlify,
    "binascii.a2b_hex": binascii.a2b_hex,
    "bytes.fromhex": bytes.fromhex,
    "bytearray.fromhex": bytes.fromhex,
    "zlib.decompress": zlib.decompress,
}


Resolver = Callable[[ast.AST], str | None] | None


@dataclass(frozen=True, slots=True)
class Folded:
    value: str | bytes
    decoded: bool = False


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _codecs_decode(value: str | bytes, encoding: str) -> str | bytes:
    enc = encoding.lower().replace("-", "_")
    if enc in ("rot13", "rot_13"):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return codecs.decode(text, "rot_13")
    if enc in ("hex", "hex_codec", "base64", "base_64", "base64_codec", "zlib", "zlib_codec", "bz2"):
        data = value.encode("latin-1") if isinstance(value, str) else value
        return codecs.decode(data, enc)
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return data.decode(enc)


def _to_bytes_arg(value: str | bytes) -> bytes:
    return value.encode("latin-1", "ignore") if isinstance(value, str) else value


def _int_list(node: ast.AST, env: Mapping[str, Folded | list[int]], depth: int) -> list[int] | None:
    if isinstance(node, ast.Name):
        bound = env.get(node.id)
        return bound if isinstance(bound, list) else None
    if isinstance(node, ast.List | ast.Tuple):
        out: list[int] = []
        for elt in node.elts:
            if isinstance(elt, ast.Constant) and isinstance(elt.value, int) and not isinstance(elt.value, bool):
                out.append(elt.value)
            else:
                return None
        return out
    return None


def int_list(node: ast.AST, env: Mapping[str, Folded | list[int]]) -> list[int] | None:
    return _int_list(node, env, 0)


def _chr_join(node: ast.Call, env: Mapping[str, Folded | list[int]], depth: int, resolve: Resolver) -> Folded | None:
    """''.join(chr(c) for c in [..]), ''.join(map(chr, [..])), ''.join([chr(104), chr(105)])."""
    if not node.args:
        return None
    arg = node.args[0]
    ints: list[int] | None = None
    if isinstance(arg, ast.GeneratorExp | ast.ListComp) and len(arg.generators) == 1:
        elt = arg.elt
        if (
            isinstance(elt, ast.Call)
            and isinstance(elt.func, ast.Name)
            and elt.func.id == "chr"
            and len(elt.args) == 1
            and isinstance(elt.args[0], ast.Name)
        ):
            ints = _int_list(arg.generators[0].iter, env, depth + 1)
        else:
            # ''.join(x for x in "abc") and similar: fold the element iterable
            inner = fold(arg.generators[0].iter, env, depth + 1, resolve)
            if inner is not None and isinstance(elt, ast.Name) and isinstance(inner.value, str):
                return inner
    elif (
        isinstance(arg, ast.Call)
        and isinstance(arg.func, ast.Name)
        and arg.func.id == "map"
        and len(arg.args) == 2
        and isinstance(arg.args[0], ast.Name)
        and arg.args[0].id == "chr"
    ):
        ints = _int_list(arg.args[1], env, depth + 1)
    elif isinstance(arg, ast.List | ast.Tuple):
        pieces: list[str] = []
        for elt in arg.elts:
            sub = fold(elt, env, depth + 1, resolve)
            if sub is None or not isinstance(sub.value, str):
                return None
            pieces.append(sub.value)
        sep = fold(node.func.value, env, depth + 1, resolve) if isinstance(node.func, ast.Attribute) else None
        joiner = sep.value if sep is not None and isinstance(sep.value, str) else ""
        return Folded(joiner.join(pieces), decoded=True)
    if ints is None:
        return None
    try:
        return Folded("".join(chr(i) for i in ints), decoded=True)
    except (ValueError, OverflowError):
        return None


def fold(node: ast.AST, env: Mapping[str, Folded | list[int]], depth: int = 0, resolve: Resolver = None) -> Folded | None:
    """Evaluate a literal-only expression to str/bytes, or None. Never executes user code."""
    if depth > MAX_DEPTH:
        return None
    try:
        return _fold(node, env, depth, resolve)
    except (ValueError, TypeError, UnicodeError, binascii.Error, zlib.error, LookupError, OverflowError, MemoryError):
        return None


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _fold(node: ast.AST, env: Mapping[str, Folded | list[int]], depth: int, resolve: Resolver) -> Folded | None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str | bytes):
            return Folded(node.value)
        return None
    if isinstance(node, ast.Name):
        bound = env.get(node.id)
        return bound if isinstance(bound, Folded) else None
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        decoded = False
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            elif isinstance(value, ast.FormattedValue):
                sub = fold(value.value, env, depth + 1, resolve)
                if sub is None:
                    return None
                parts.append(sub.value if isinstance(sub.value, str) else repr(sub.value))
                decoded = decoded or sub.decoded
            else:
                return None
        return Folded("".join(parts), decoded)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = fold(node.left, env, depth + 1, resolve)
        right = fold(node.right, env, depth + 1, resolve)
        if left is None or right is None or type(left.value) is not type(right.value):
            return None
        joined: str | bytes = left.value + right.value  # type: ignore[operator]
        if len(joined) > MAX_PAYLOAD:
            return None
        return Folded(joined, left.decoded or right.decoded)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        # "ab" * 3 is rarely an attack; refuse to expand (memory) but keep it literal-free.
        return None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        base = fold(node.value, env, depth + 1, resolve)
        sl = node.slice
        if base is None:
            return None
        bounds: list[int | None] = []
        for part in (sl.lower, sl.upper, sl.step):
            if part is None:
                bounds.append(None)
            elif isinstance(part, ast.Constant) and isinstance(part.value, int):
                bounds.append(part.value)
            elif (
                isinstance(part, ast.UnaryOp)
                and isinstance(part.op, ast.USub)
                and isinstance(part.operand, ast.Constant)
                and isinstance(part.operand.value, int)
            ):
                bounds.append(-part.operand.value)
            else:
                return None
        return Folded(base.value[slice(*bounds)], decoded=True)
    if isinstance(node, ast.Call):
        return _fold_call(node, env, depth, resolve)
    return None


def _fold_call(node: ast.Call, env: Mapping[str, Folded | list[int]], depth: int, resolve: Resolver) -> Folded | None:
    func = node.func
    name = (resolve(func) if resolve is not None else None) or _dotted(func)
    if name in _B64_FUNCS and node.args:
        arg = fold(node.args[0], env, depth + 1, resolve)
        if arg is None:
            return None
        data = arg.value
        if name in ("bytes.fromhex", "bytearray.fromhex"):
            return Folded(bytes.fromhex(data if isinstance(data, str) else data.decode("latin-1")), True)
        return Folded(_B64_FUNCS[name](_to_bytes_arg(data)), True)
    if name == "codecs.decode" and node.args:
        arg = fold(node.args[0], env, depth + 1, resolve)
        enc_node = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "encoding":
                enc_node = kw.value
        enc = fold(enc_node, env, depth + 1, resolve) if enc_node is not None else Folded("utf-8")
        if arg is None or enc is None or not isinstance(enc.value, str):
            return None
        return Folded(_codecs_decode(arg.value, enc.value), True)
    if name == "codecs.encode" and len(node.args) >= 2:
        arg = fold(node.args[0], env, depth + 1, resolve)
        enc = fold(node.args[1], env, depth + 1, resolve)
        if arg is None or enc is None or not isinstance(enc.value, str):
            return None
        if enc.value.lower().replace("-", "_") in ("rot13", "rot_13"):
            return Folded(_codecs_decode(arg.value, "rot13"), True)
        return None
    if isinstance(func, ast.Name) and func.id in ("bytes", "bytearray") and node.args:
        ints = _int_list(node.args[0], env, depth + 1)
        if ints is not None:
            return Folded(bytes(ints), True)
        sub = fold(node.args[0], env, depth + 1, resolve)
        return sub if sub is not None and isinstance(sub.value, bytes) else None
    if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1:
        return fold(node.args[0], env, depth + 1, resolve)
    if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
        arg0 = node.args[0]
        if isinstance(arg0, ast.Constant) and isinstance(arg0.value, int):
            return Folded(chr(arg0.value), True)
        return None
    if isinstance(func, ast.Attribute):
        method = func.attr
        if method == "join":
            return _chr_join(node, env, depth, resolve)
        base = fold(func.value, env, depth + 1, resolve)
        if base is None:
            return None
        if method == "decode":
            enc_node = node.args[0] if node.args else None
            for kw in node.keywords:
                if kw.arg == "encoding":
                    enc_node = kw.value
            enc = fold(enc_node, env, depth + 1, resolve) if enc_node is not None else Folded("utf-8")
            if enc is None or not isinstance(enc.value, str):
                return None
            if isinstance(base.value, str):
                return Folded(_codecs_decode(base.value, enc.value), True)
            return Folded(base.value.decode(enc.value, "replace"), base.decoded)
        if method == "encode":
            if isinstance(base.value, str):
                return Folded(base.value.encode("utf-8", "surrogatepass"), base.decoded)
            return None
        if method in ("lower", "upper", "strip", "casefold", "swapcase", "title", "capitalize"):
            if not node.args:
                return Folded(getattr(base.value, method)(), base.decoded)
            return None
        if method == "replace" and len(node.args) == 2:
            old = fold(node.args[0], env, depth + 1, resolve)
            new = fold(node.args[1], env, depth + 1, resolve)
            if old is None or new is None or type(old.value) is not type(base.value):
                return None
            if type(new.value) is not type(base.value):
                return None
            return Folded(base.value.replace(old.value, new.value), True)  # type: ignore[arg-type]
        if method == "format":
            return None
    return None
