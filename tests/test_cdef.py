"""The cffi cdef (python/ipcfast/_ipc_cdef.h) must mirror csrc/ipc.h.

Both files are parsed with pycparser (after stripping the preprocessor,
expanding the header's X-macro lists such as IPC_RESULT_MAP and substituting
its integer #defines) and compared declaration by declaration: every
function signature, typedef, struct field, enum member, global variable and
integer #define. Enum values are compared too, except for enums the cdef
ends with "..." (cffi then takes the values from the compiler): those are
compared by member names in order, and test_compiled_constants_match_the_header
checks the compiled values. Array parameters compare equal to pointers (C
adjusts them); parameter names are ignored.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

import pytest

pycparser = pytest.importorskip("pycparser")
from pycparser import c_ast, c_parser  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "ipc.h")
CDEF = os.path.join(ROOT, "python", "ipcfast", "_ipc_cdef.h")

# Names for pycparser; types are compared by name, never resolved.
PRELUDE = """
typedef int bool;
typedef int size_t;
typedef int uint8_t;
typedef int uint16_t;
typedef int uint32_t;
typedef int uint64_t;
typedef int int8_t;
typedef int int16_t;
typedef int int32_t;
typedef int int64_t;
typedef int intptr_t;
"""
PRELUDE_NAMES = set(re.findall(r"typedef int (\w+);", PRELUDE))


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


# Function-like macros: name -> (parameters, body). Only X-macro lists and
# their generators are expected in ipc.h.
Macros = Dict[str, Tuple[List[str], str]]


def split_defines(text: str, skip_cplusplus: bool, macros: Optional[Macros] = None) -> Tuple[Dict[str, str], str]:
    """Object-like #defines and the text with every preprocessor line removed;
    function-like macros go to `macros` (an error where none are expected)."""
    text = re.sub(r"\\\n", " ", text)
    defines: Dict[str, str] = {}
    kept: List[str] = []
    depth_skipping = 0
    depth = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("#"):
            directive = stripped[1:].strip()
            if directive.startswith(("if", "ifdef", "ifndef")):
                depth += 1
                if skip_cplusplus and "__cplusplus" in directive and not depth_skipping:
                    depth_skipping = depth
            elif directive.startswith("endif"):
                if depth_skipping == depth:
                    depth_skipping = 0
                depth -= 1
            elif directive.startswith("define") and not depth_skipping:
                m = re.match(r"define\s+(\w+)(\([^)]*\))?\s*(.*)$", directive)
                assert m, line
                if m.group(2) is not None:
                    assert macros is not None, f"function-like macro not supported: {line}"
                    params = [p.strip() for p in m.group(2)[1:-1].split(",")]
                    macros[m.group(1)] = (params, m.group(3).strip())
                else:
                    defines[m.group(1)] = m.group(3).strip()
            kept.append("")
            continue
        kept.append("" if depth_skipping else line)
    return defines, "\n".join(kept)


def macro_args(text: str) -> List[str]:
    """The arguments of one macro call's parenthesized list (strings may hold commas)."""
    return [a.strip() for a in re.findall(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+', text)]


def substitute_params(body: str, args: Dict[str, str]) -> str:
    return re.sub(r"\b\w+\b", lambda w: args.get(w.group(0), w.group(0)), body)


def expand_x_macros(text: str, macros: Macros) -> str:
    """Expands LIST(GEN) where LIST is an X-macro list of XX(...) entries and
    GEN a generator macro, as the C preprocessor would."""

    def expand(m: "re.Match[str]") -> str:
        (list_param,), entries = macros[m.group(1)]
        params, body = macros[m.group(2)]
        out = []
        for call in re.findall(rf"\b{list_param}\(((?:\"(?:[^\"\\\\]|\\\\.)*\"|[^()\"])*)\)", entries):
            out.append(substitute_params(body, dict(zip(params, macro_args(call)))))
        return " ".join(out)

    names = "|".join(sorted(macros)) or "(?!)"
    return re.sub(rf"\b({names})\(\s*({names})\s*\)", expand, text)


def substitute(text: str, defines: Dict[str, str]) -> str:
    def replace(m: "re.Match[str]") -> str:
        word = m.group(0)
        return f"({defines[word]})" if defines.get(word) else word

    for _ in range(10):
        new = re.sub(r"\b[A-Za-z_]\w*\b", replace, text)
        if new == text:
            return new
        text = new
    raise AssertionError("recursive #defines")


def parse(text: str, filename: str) -> c_ast.FileAST:
    return c_parser.CParser().parse(PRELUDE + text, filename)


def const_value(node: c_ast.Node) -> int:
    """Evaluates an integer constant expression node."""
    if isinstance(node, c_ast.Constant):
        value = node.value.rstrip("uUlL")
        if value.startswith("'"):
            return ord(value[1:-1])
        return int(value, 0) if not re.fullmatch(r"0[0-7]+", value) else int(value, 8)
    if isinstance(node, c_ast.UnaryOp):
        v = const_value(node.expr)
        return {"-": -v, "+": v, "~": ~v, "!": int(not v)}[node.op]
    if isinstance(node, c_ast.BinaryOp):
        a, b = const_value(node.left), const_value(node.right)
        ops = {
            "+": a + b,
            "-": a - b,
            "*": a * b,
            "|": a | b,
            "&": a & b,
            "^": a ^ b,
            "<<": a << b if b >= 0 else 0,
            ">>": a >> b if b >= 0 else 0,
        }
        if node.op in ops:
            return ops[node.op]
        if node.op in ("/", "%"):
            return a // b if node.op == "/" else a % b
        raise AssertionError(f"unsupported operator {node.op}")
    if isinstance(node, c_ast.Cast):
        return const_value(node.expr)
    raise AssertionError(f"not an integer constant: {type(node).__name__}")


def eval_define(expr: str, defines: Dict[str, str]) -> int:
    ast = parse(f"int __value = ({substitute(expr, defines)});", "<define>")
    return const_value(ast.ext[-1].init)


def type_str(node: c_ast.Node, param: bool = False) -> str:
    """A canonical spelling of a declared type (names dropped)."""
    if isinstance(node, c_ast.TypeDecl):
        return " ".join(sorted(node.quals) + [base_str(node.type)])
    if isinstance(node, c_ast.PtrDecl):
        return type_str(node.type) + " *" + "".join(" " + q for q in sorted(node.quals))
    if isinstance(node, c_ast.ArrayDecl):
        if param:  # array parameters are pointers
            return type_str(node.type) + " *"
        dim = "" if node.dim is None else str(const_value(node.dim))
        return f"{type_str(node.type)}[{dim}]"
    if isinstance(node, c_ast.FuncDecl):
        params = []
        for p in node.args.params if node.args else []:
            if isinstance(p, c_ast.EllipsisParam):
                params.append("...")
            else:
                params.append(type_str(p.type, param=True))
        if params == ["void"]:
            params = []
        return f"{type_str(node.type)} ({', '.join(params)})"
    if isinstance(node, c_ast.Typename):
        return type_str(node.type, param)
    raise AssertionError(f"unexpected type node {type(node).__name__}")


def base_str(node: c_ast.Node) -> str:
    if isinstance(node, c_ast.IdentifierType):
        return " ".join(node.names)
    if isinstance(node, c_ast.Struct):
        return f"struct {node.name}"
    if isinstance(node, c_ast.Union):
        return f"union {node.name}"
    if isinstance(node, c_ast.Enum):
        return f"enum {node.name}"
    raise AssertionError(f"unexpected base type {type(node).__name__}")


class Declarations:
    """Everything a header declares, in comparable form."""

    def __init__(self, ast: c_ast.FileAST) -> None:
        self.functions: Dict[str, str] = {}
        self.typedefs: Dict[str, str] = {}
        self.structs: Dict[str, List[Tuple[str, str]]] = {}
        self.enums: Dict[str, List[Tuple[str, int]]] = {}
        self.open_enums: set = set()  # cdef enums ending in "...": values from the compiler
        self.variables: Dict[str, str] = {}
        for node in ast.ext:
            self._collect_tags(node)
            if isinstance(node, c_ast.Typedef):
                if node.name in PRELUDE_NAMES:
                    continue
                self.typedefs[node.name] = type_str(node.type)
            elif isinstance(node, c_ast.Decl):
                if isinstance(node.type, c_ast.FuncDecl):
                    self.functions[node.name] = type_str(node.type)
                elif node.name is not None:
                    self.variables[node.name] = type_str(node.type)

    def _collect_tags(self, node: c_ast.Node) -> None:
        for child in self._walk(node):
            if isinstance(child, c_ast.Struct) and child.decls is not None:
                self.structs[child.name] = [(d.name, type_str(d.type)) for d in child.decls]
            elif isinstance(child, c_ast.Enum) and child.values is not None:
                members: List[Tuple[str, int]] = []
                value = -1
                for e in child.values.enumerators:
                    value = const_value(e.value) if e.value is not None else value + 1
                    members.append((e.name, value))
                self.enums[child.name] = members

    def _walk(self, node: c_ast.Node):
        yield node
        for _, child in node.children():
            yield from self._walk(child)


def load_header() -> Tuple[Dict[str, str], Declarations, Macros]:
    with open(HEADER, encoding="utf-8") as f:
        text = strip_comments(f.read())
    macros: Macros = {}
    defines, body = split_defines(text, skip_cplusplus=True, macros=macros)
    body = expand_x_macros(body, macros)
    int_defines = {k: v for k, v in defines.items() if v and not v.startswith('"')}
    return defines, Declarations(parse(substitute(body, int_defines), HEADER)), macros


OPEN_ENUM = re.compile(r"enum\s+(\w+)\s*\{([^{}]*?),\s*\.\.\.\s*\}", re.S)


def load_cdef() -> Tuple[Dict[str, str], Declarations, Dict[str, str]]:
    with open(CDEF, encoding="utf-8") as f:
        text = strip_comments(f.read())
    defines, body = split_defines(text, skip_cplusplus=False)
    python_names = re.findall(r'extern\s+"Python"\s+[^;]*?\b(\w+)\s*\(', body)
    body = re.sub(r'extern\s+"Python"\s+', "", body)
    open_enums = set(m.group(1) for m in OPEN_ENUM.finditer(body))
    body = OPEN_ENUM.sub(lambda m: f"enum {m.group(1)} {{{m.group(2)}}}", body)
    decls = Declarations(parse(body, CDEF))
    decls.open_enums = open_enums
    callbacks = {n: decls.functions.pop(n) for n in python_names}
    return defines, decls, callbacks


HEADER_DEFINES, H, HEADER_MACROS = load_header()
CDEF_DEFINES, C, CALLBACKS = load_cdef()


def test_the_parsers_found_the_declarations() -> None:
    # Guards against a parser change that silently finds nothing.
    assert len(H.functions) >= 30
    assert "ipc_client_request" in H.functions
    assert "ipc_server_options" in H.structs
    assert "ipc_result" in H.enums
    assert len(HEADER_DEFINES) >= 15


def test_every_function_matches() -> None:
    missing = sorted(set(H.functions) - set(C.functions))
    extra = sorted(set(C.functions) - set(H.functions))
    assert not missing, f"functions of ipc.h missing from the cdef: {missing}"
    assert not extra, f"functions in the cdef that ipc.h does not declare: {extra}"
    for name, signature in H.functions.items():
        assert C.functions[name] == signature, f"{name}: cdef {C.functions[name]!r} != ipc.h {signature!r}"


def test_every_typedef_matches() -> None:
    assert H.typedefs == C.typedefs


def test_every_struct_field_matches() -> None:
    assert set(H.structs) == set(C.structs)
    for name, fields in H.structs.items():
        assert C.structs[name] == fields, f"struct {name}"


def test_every_enum_member_matches() -> None:
    assert set(H.enums) == set(C.enums)
    for name, members in H.enums.items():
        if name in C.open_enums:
            names = [member for member, _ in C.enums[name]]
            assert names == [member for member, _ in members], f"enum {name}: member names"
        else:
            assert C.enums[name] == members, f"enum {name}"


def test_result_codes_and_verdicts_come_from_their_x_macro_lists() -> None:
    # One list each: the enums are generated, and the cdef leaves the values
    # to the compiler so there is no second copy of them to drift.
    assert {"IPC_RESULT_MAP", "IPC_VERDICT_MAP"} <= set(HEADER_MACROS)
    assert C.open_enums == {"ipc_result", "ipc_verdict"}
    codes = dict(H.enums["ipc_result"])
    assert codes["IPC_OK"] == 0 and codes["IPC_E_SYSTEM"] == 15 and codes["IPC_E_INTERRUPTED"] == 16
    assert len(codes) == 17
    assert dict(H.enums["ipc_verdict"])["IPC_VERDICT_TOO_LARGE"] == 7


def test_a_renamed_or_missing_member_is_caught() -> None:
    # The names-only comparison must still fail on a disagreement.
    with open(CDEF, encoding="utf-8") as f:
        text = f.read()
    for broken in (text.replace("IPC_E_IN_USE,", "IPC_E_INUSE,"), text.replace("    IPC_E_BUSY,\n", "")):
        stripped = strip_comments(broken)
        _, body = split_defines(stripped, skip_cplusplus=False)
        body = re.sub(r'extern\s+"Python"\s+', "", body)
        body = OPEN_ENUM.sub(lambda m: f"enum {m.group(1)} {{{m.group(2)}}}", body)
        names = [member for member, _ in Declarations(parse(body, CDEF)).enums["ipc_result"]]
        assert names != [member for member, _ in H.enums["ipc_result"]]


def test_global_variables_match() -> None:
    expected = dict(H.variables)
    # The string #define IPCFAST_VERSION is a `static char *const` in the cdef.
    assert C.variables.pop("IPCFAST_VERSION") == "char * const"
    assert HEADER_DEFINES["IPCFAST_VERSION"].startswith('"')
    assert C.variables == expected


def test_every_integer_define_matches() -> None:
    header_ints = {k: v for k, v in HEADER_DEFINES.items() if v and not v.startswith('"') and k != "IPCFAST_IPC_H"}
    missing = sorted(set(header_ints) - set(CDEF_DEFINES))
    extra = sorted(set(CDEF_DEFINES) - set(header_ints))
    assert not missing, f"#defines of ipc.h missing from the cdef: {missing}"
    assert not extra, f"#defines in the cdef that ipc.h does not have: {extra}"
    for name, expr in header_ints.items():
        value = eval_define(expr, header_ints)
        cdef_value = CDEF_DEFINES[name]
        if cdef_value != "...":
            assert eval_define(cdef_value, {}) == value, f"#define {name}"


def test_python_callbacks_match_the_c_callback_types() -> None:
    assert set(CALLBACKS) == {"_ipcfast_serve", "_ipcfast_log", "_ipcfast_cancel", "_ipcfast_interrupt_check"}
    assert H.typedefs["ipc_interrupt_fn"] == CALLBACKS["_ipcfast_interrupt_check"] + " *"
    assert H.typedefs["ipc_cancel_fn"] == CALLBACKS["_ipcfast_cancel"] + " *"
    assert "ipc_returning_handler_fn" in H.typedefs and "ipc_log_fn" in H.typedefs
    # typedef void (*fn)(...) is "void (...) *"; the callback is "void (...)".
    assert H.typedefs["ipc_connection_handler_fn"] == CALLBACKS["_ipcfast_serve"] + " *"
    assert H.typedefs["ipc_log_fn"] == CALLBACKS["_ipcfast_log"] + " *"


def _native() -> Optional[object]:
    try:
        from ipcfast._ipcfast_cffi import lib
    except ImportError:
        return None
    return lib


def test_compiled_constants_match_the_header() -> None:
    lib = _native()
    if lib is None:
        pytest.skip("the native module is not built")
    header_ints = {k: v for k, v in HEADER_DEFINES.items() if v and not v.startswith('"') and k != "IPCFAST_IPC_H"}
    for name, expr in header_ints.items():
        assert getattr(lib, name) == eval_define(expr, header_ints), name
    for members in H.enums.values():
        for member, value in members:
            assert getattr(lib, member) == value, member
