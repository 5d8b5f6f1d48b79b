"""A parser for the FHIRPath subset that SQL on FHIR v2 ViewDefinitions use (http://hl7.org/fhirpath/N1/).

It turns an expression into a small syntax tree; `compiler.py` turns the tree into SQL. Nothing here evaluates
FHIRPath against data. Grammar and operator precedence follow the FHIRPath normative grammar (section 10 and
appendix A): invocation and indexer bind tightest, then unary +/-, multiplicative, additive, `is`/`as`, union `|`,
inequality, equality, membership, `and`, `or`/`xor`, `implies`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal


class FhirPathSyntaxError(ValueError):
    """The expression is not FHIRPath (message says where)."""


@dataclass(frozen=True)
class Literal:
    value: object  # str | int | Decimal | bool
    type: str  # FHIR type: string, integer, decimal, boolean, date, dateTime, time


@dataclass(frozen=True)
class EmptySet:
    pass


@dataclass(frozen=True)
class Identifier:  # a member of $this (the start of a path)
    name: str


@dataclass(frozen=True)
class Variable:  # %name, $this, $index, $total
    name: str
    external: bool  # True for %name


@dataclass(frozen=True)
class Member:
    target: object
    name: str


@dataclass(frozen=True)
class Call:
    target: object | None  # None: a function called on $this
    name: str
    args: tuple


@dataclass(frozen=True)
class Index:
    target: object
    index: object


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Unary:
    op: str
    operand: object


@dataclass(frozen=True)
class TypeName:  # the argument of ofType(), is(), as(), getReferenceKey()
    name: str


_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<datetime>@T[0-9:.]+|@[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?(T[0-9:.]*(Z|[+-][0-9]{2}:[0-9]{2})?)?)
  | (?P<number>[0-9]+(\.[0-9]+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<delimited>`(?:[^`\\]|\\.)*`)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<extvar>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<var>\$(?:this|index|total))
  | (?P<op><=|>=|!=|!~|[-+*/&|<>=~.,()\[\]{}])
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"'": "'", '"': '"', "`": "`", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "\\": "\\", "/": "/"}

BINARY_POWER = {"implies": 1, "or": 2, "xor": 2, "and": 3, "in": 4, "contains": 4, "=": 5, "!=": 5, "~": 5,
                "!~": 5, "<": 6, ">": 6, "<=": 6, ">=": 6, "|": 7, "is": 8, "as": 8, "+": 9, "-": 9, "&": 9,
                "*": 10, "/": 10, "div": 10, "mod": 10}
_UNARY_POWER = 11


def _unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and i + 5 < len(text):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise FhirPathSyntaxError(f"unexpected character {expr[pos]!r} at position {pos + 1}")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    toks.append(_Tok("end", "", len(expr)))
    return toks


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = tokenize(expr)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text != text:
            found = f"'{tok.text}'" if tok.kind != "end" else "the end of the expression"
            raise FhirPathSyntaxError(f"expected '{text}' but found {found} at position {tok.pos + 1}")

    def parse(self):
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "end":
            raise FhirPathSyntaxError(f"unexpected '{tok.text}' at position {tok.pos + 1}")
        return node

    def expression(self, min_power: int):
        left = self.unary()
        while True:
            tok = self.peek()
            op = tok.text if tok.kind in ("op", "ident") else None
            power = BINARY_POWER.get(op) if op else None
            if power is None or power <= min_power:
                return left
            self.next()
            if op in ("is", "as"):
                left = Call(left, "ofType" if op == "as" else "is", (TypeName(self.type_name()),))
                continue
            right = self.expression(power)
            left = Binary(op, left, right)

    def type_name(self) -> str:
        tok = self.next()
        if tok.kind not in ("ident", "delimited"):
            raise FhirPathSyntaxError(f"expected a type name at position {tok.pos + 1}")
        name = tok.text.strip("`")
        while self.peek().text == ".":  # FHIR.string, System.Integer
            self.next()
            name = self.next().text
        return name

    def unary(self):
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("+", "-"):
            self.next()
            return Unary(tok.text, self.expression(_UNARY_POWER))
        return self.postfix(self.term())

    def postfix(self, node):
        while True:
            tok = self.peek()
            if tok.text == ".":
                self.next()
                name_tok = self.next()
                if name_tok.kind not in ("ident", "delimited"):
                    raise FhirPathSyntaxError(f"expected a name after '.' at position {name_tok.pos + 1}")
                name = name_tok.text if name_tok.kind == "ident" else _unescape(name_tok.text[1:-1])
                if self.peek().text == "(" and name_tok.kind == "ident":
                    node = Call(node, name, self.arguments(name))
                else:
                    node = Member(node, name)
            elif tok.text == "[":
                self.next()
                index = self.expression(0)
                self.expect("]")
                node = Index(node, index)
            else:
                return node

    def arguments(self, name: str) -> tuple:
        self.expect("(")
        args = []
        if self.peek().text != ")":
            while True:
                if name in ("ofType", "is", "as", "getReferenceKey"):
                    args.append(TypeName(self.type_name()))
                else:
                    args.append(self.expression(0))
                if self.peek().text == ",":
                    self.next()
                    continue
                break
        self.expect(")")
        return tuple(args)

    def term(self):
        tok = self.next()
        if tok.kind == "number":
            return Literal(Decimal(tok.text), "decimal") if "." in tok.text else Literal(int(tok.text), "integer")
        if tok.kind == "string":
            return Literal(_unescape(tok.text[1:-1]), "string")
        if tok.kind == "datetime":
            text = tok.text[1:]
            if text.startswith("T"):
                return Literal(text[1:], "time")
            return Literal(text, "dateTime" if "T" in text else "date")
        if tok.kind == "extvar":
            name = tok.text[1:]
            if name[:1] in ("`", "'"):
                name = _unescape(name[1:-1])
            return Variable(name, True)
        if tok.kind == "var":
            return Variable(tok.text, False)
        if tok.kind == "delimited":
            return Identifier(_unescape(tok.text[1:-1]))
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return Literal(tok.text == "true", "boolean")
            if self.peek().text == "(":
                return Call(None, tok.text, self.arguments(tok.text))
            return Identifier(tok.text)
        if tok.text == "(":
            node = self.expression(0)
            self.expect(")")
            return node
        if tok.text == "{":
            self.expect("}")
            return EmptySet()
        found = f"'{tok.text}'" if tok.kind != "end" else "the end of the expression"
        raise FhirPathSyntaxError(f"unexpected {found} at position {tok.pos + 1}")


def parse(expr: str):
    """The syntax tree of a FHIRPath expression; FhirPathSyntaxError says what is wrong and where."""
    if not isinstance(expr, str):
        raise FhirPathSyntaxError(f"a FHIRPath expression must be a string, not {type(expr).__name__}")
    if not expr.strip():
        raise FhirPathSyntaxError("the expression is empty")
    return _Parser(expr).parse()
