"""Sizes as polynomials in the workload symbols, with exact rational coefficients.

Every shape and cost formula in the IR is a polynomial in B (batch), T (new tokens) and L
(cached KV length) with integer coefficients; a sharded local shape divides one by mesh
sizes, which makes the coefficients rational. `Polynomial` is exactly that and nothing
more, so a warm plan (cached graph -> search -> lowering -> codegen) never imports sympy,
whose import alone cost a quarter of a second and whose arithmetic cost more.

A polynomial is kept in one canonical form (a dict from monomial to nonzero coefficient),
so two equal formulas are equal objects: no expand/simplify step exists or is needed.
`str()` prints what sympy prints for the same expression (plan files and programs stay
byte-identical to the sympy era); a constant compares and hashes like its int or Fraction,
as a sympy Integer did, so mixed int/size dict keys and `==` keep working.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

Number = int | Fraction
# A monomial: (symbol name, exponent) pairs sorted by name; () is the constant monomial.
Monomial = tuple[tuple[str, int], ...]


def _norm(c: Number) -> Number:
    """Coefficients are ints whenever they can be (Fraction arithmetic is slow)."""
    if isinstance(c, Fraction) and c.denominator == 1:
        return c.numerator
    return c


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    if not a:
        return b
    if not b:
        return a
    exps = dict(a)
    for name, e in b:
        exps[name] = exps.get(name, 0) + e
    return tuple(sorted(exps.items()))


class Polynomial:
    """An immutable, hashable polynomial over named symbols with rational coefficients."""

    __slots__ = ("_terms", "_hash", "_str")

    def __init__(self, terms: dict[Monomial, Number]):
        """`terms` must already be canonical (no zero coefficient, normalized numbers); use
        `symbol`, `constant` or `as_polynomial` to build one."""
        self._terms = terms
        self._hash: int | None = None
        self._str: str | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def _from_items(cls, items: tuple[tuple[Monomial, Number], ...]) -> Polynomial:
        return cls(dict(items))

    def __reduce__(self):
        return (Polynomial._from_items, (tuple(self._terms.items()),))

    @property
    def terms(self) -> dict[Monomial, Number]:
        """Monomial -> coefficient (a copy: the polynomial is immutable)."""
        return dict(self._terms)

    # -- queries ------------------------------------------------------------------------
    @property
    def is_number(self) -> bool:
        """No symbols (sympy's `is_number`)."""
        return not self._terms or (len(self._terms) == 1 and () in self._terms)

    def as_number(self) -> Number | None:
        """The value of a constant, else None."""
        if not self._terms:
            return 0
        if len(self._terms) == 1:
            return self._terms.get(())
        return None

    def as_int(self) -> int | None:
        """The value of an integer constant, else None (what sympy's `is_Integer` asked)."""
        v = self.as_number()
        return v if isinstance(v, int) else None

    @property
    def free_symbols(self) -> frozenset[str]:
        """Names of the symbols the polynomial depends on."""
        return frozenset(name for mono in self._terms for name, _ in mono)

    def has_integer_coefficients(self) -> bool:
        return all(isinstance(c, int) for c in self._terms.values())

    def subs(self, values: dict[str, Number]) -> Polynomial:
        """Substitute numbers for some symbols."""
        out: dict[Monomial, Number] = {}
        for mono, c in self._terms.items():
            rest = []
            for name, e in mono:
                if name in values:
                    c = c * values[name] ** e
                else:
                    rest.append((name, e))
            key = tuple(rest)
            out[key] = out.get(key, 0) + c
        return _canonical(out)

    # -- arithmetic ---------------------------------------------------------------------
    def __add__(self, other: Any) -> Polynomial:
        o = _coerce(other)
        if o is None:
            return NotImplemented
        out = dict(self._terms)
        for mono, c in o._terms.items():
            out[mono] = out.get(mono, 0) + c
        return _canonical(out)

    __radd__ = __add__

    def __neg__(self) -> Polynomial:
        return Polynomial({m: -c for m, c in self._terms.items()})

    def __sub__(self, other: Any) -> Polynomial:
        o = _coerce(other)
        if o is None:
            return NotImplemented
        return self + (-o)

    def __rsub__(self, other: Any) -> Polynomial:
        o = _coerce(other)
        if o is None:
            return NotImplemented
        return o + (-self)

    def __mul__(self, other: Any) -> Polynomial:
        o = _coerce(other)
        if o is None:
            return NotImplemented
        out: dict[Monomial, Number] = {}
        for ma, ca in self._terms.items():
            for mb, cb in o._terms.items():
                m = _mono_mul(ma, mb)
                out[m] = out.get(m, 0) + ca * cb
        return _canonical(out)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Polynomial:
        """Division by a number (a mesh size); dividing by a polynomial is `exact_quotient`."""
        o = _coerce(other)
        if o is None:
            return NotImplemented
        d = o.as_number()
        if d is None:
            raise TypeError(f"cannot divide {self} by the non-constant {o}; use exact_quotient")
        if d == 0:
            raise ZeroDivisionError(f"{self} / 0")
        return Polynomial({m: _norm(Fraction(c) / d) for m, c in self._terms.items()})

    def __rtruediv__(self, other: Any) -> Polynomial:
        o = _coerce(other)
        if o is None:
            return NotImplemented
        return o / self

    def __floordiv__(self, other: Any) -> Polynomial:
        """Floor division of constants only (sympy would give a floor() otherwise)."""
        a, b = self.as_number(), _number(other)
        if a is None or b is None:
            raise TypeError(f"floor division needs constants, got {self} // {other}")
        return constant(a // b)

    def __rfloordiv__(self, other: Any) -> Polynomial:
        a, b = _number(other), self.as_number()
        if a is None or b is None:
            raise TypeError(f"floor division needs constants, got {other} // {self}")
        return constant(a // b)

    def __mod__(self, other: Any) -> Polynomial:
        a, b = self.as_number(), _number(other)
        if a is None or b is None:
            raise TypeError(f"modulo needs constants, got {self} % {other}")
        return constant(a % b)

    def __pow__(self, exponent: int) -> Polynomial:
        if not isinstance(exponent, int) or exponent < 0:
            raise TypeError(f"only non-negative integer powers of a polynomial, got {exponent!r}")
        out = ONE
        for _ in range(exponent):
            out = out * self
        return out

    # -- numbers ------------------------------------------------------------------------
    def _value(self, what: str) -> Number:
        v = self.as_number()
        if v is None:
            raise TypeError(f"{self} has symbols {sorted(self.free_symbols)}; cannot take {what}")
        return v

    def __int__(self) -> int:
        return int(self._value("int()"))  # a Fraction truncates, as sympy's int(Rational)

    def __index__(self) -> int:
        v = self.as_int()
        if v is None:
            raise TypeError(f"{self} is not an integer constant")
        return v

    def __float__(self) -> float:
        return float(self._value("float()"))

    def __bool__(self) -> bool:
        return bool(self._terms)

    def _compare(self, other: Any, what: str) -> tuple[Number, Number]:
        b = _number(other)
        a = self.as_number()
        if a is None or b is None:
            raise TypeError(f"cannot order {self} {what} {other}: not both constants")
        return a, b

    def __lt__(self, other: Any) -> bool:
        a, b = self._compare(other, "<")
        return a < b

    def __le__(self, other: Any) -> bool:
        a, b = self._compare(other, "<=")
        return a <= b

    def __gt__(self, other: Any) -> bool:
        a, b = self._compare(other, ">")
        return a > b

    def __ge__(self, other: Any) -> bool:
        a, b = self._compare(other, ">=")
        return a >= b

    # -- identity -----------------------------------------------------------------------
    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Polynomial):
            return self._terms == other._terms
        if isinstance(other, (int, Fraction)) and not isinstance(other, bool):
            v = self.as_number()
            return v is not None and v == other
        return NotImplemented

    def __ne__(self, other: Any) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        if self._hash is None:
            v = self.as_number()
            self._hash = hash(v) if v is not None else hash(frozenset(self._terms.items()))
        return self._hash

    def __str__(self) -> str:
        if self._str is None:
            self._str = _sympy_text(self._terms)
        return self._str

    def __repr__(self) -> str:
        return str(self)

    def _sympy_(self) -> Any:
        """`sympy.sympify(p)`: the same expression with B, T, L positive integer symbols."""
        import sympy

        out = sympy.Integer(0)
        for mono, c in self._terms.items():
            term = sympy.Rational(c.numerator, c.denominator) if isinstance(c, Fraction) else sympy.Integer(c)
            for name, e in mono:
                term *= sympy.Symbol(name, integer=True, positive=True) ** e
            out += term
        return out


def ordered_terms(terms: dict[Monomial, Number]) -> list[tuple[Monomial, Number]]:
    """Terms in sympy's printing order: exponent vectors over the symbols sorted by name,
    compared lexicographically, largest first (so the constant comes last)."""
    if len(terms) == 2 and terms.get((), 0) > 0:
        # sympy's one exception: a positive constant plus a negative multiple of one
        # factor prints constant first (`1 - B`, but `-B*T + 1`)
        (mono, c), = ((m, c) for m, c in terms.items() if m)
        if len(mono) == 1 and c < 0:
            return [((), terms[()]), (mono, c)]
    names = sorted({n for mono in terms for n, _ in mono})
    return sorted(terms.items(), key=lambda mc: tuple(dict(mc[0]).get(n, 0) for n in names), reverse=True)


def monomial_text(mono: Monomial) -> str:
    """`B*T**2`: factors by symbol name, as sympy's str prints them."""
    return "*".join(name if e == 1 else f"{name}**{e}" for name, e in mono)


def term_text(mono: Monomial, c: Number) -> str:
    if not mono:
        return str(c)  # Fraction prints p/q, as sympy's Rational
    sign = "-" if c < 0 else ""
    c = abs(c)
    p, q = (c.numerator, c.denominator) if isinstance(c, Fraction) else (c, 1)
    text = "*".join(([str(p)] if p != 1 else []) + [monomial_text(mono)])
    return sign + text + (f"/{q}" if q != 1 else "")


def _sympy_text(terms: dict[Monomial, Number]) -> str:
    if not terms:
        return "0"
    out = ""
    for i, (mono, c) in enumerate(ordered_terms(terms)):
        t = term_text(mono, c)
        if i == 0:
            out = t
        elif t.startswith("-"):
            out += " - " + t[1:]
        else:
            out += " + " + t
    return out


def _canonical(terms: dict[Monomial, Number]) -> Polynomial:
    return Polynomial({m: _norm(c) for m, c in terms.items() if c != 0})


def _number(x: Any) -> Number | None:
    if isinstance(x, Polynomial):
        return x.as_number()
    if isinstance(x, (int, Fraction)) and not isinstance(x, bool):
        return x
    return None


def _coerce(x: Any) -> Polynomial | None:
    if isinstance(x, Polynomial):
        return x
    if isinstance(x, (int, Fraction)) and not isinstance(x, bool):
        return constant(x)
    return None


_SMALL = {}


def constant(value: Number) -> Polynomial:
    """A constant polynomial (small ints are shared)."""
    value = _norm(value)
    p = _SMALL.get(value) if isinstance(value, int) else None
    if p is None:
        p = Polynomial({(): value} if value != 0 else {})
    return p


_SMALL.update({i: Polynomial({(): i} if i else {}) for i in range(-1, 257)})
ZERO, ONE = _SMALL[0], _SMALL[1]


def symbol(name: str) -> Polynomial:
    return Polynomial({((name, 1),): 1})


def as_polynomial(x: Any) -> Polynomial:
    """An int, Fraction or Polynomial as a Polynomial (what `sympy.sympify` did for sizes)."""
    p = _coerce(x)
    if p is None:
        raise TypeError(f"not a size: {x!r} ({type(x).__name__})")
    return p


def product(factors: Any) -> Polynomial:
    out = ONE
    for f in factors:
        out = out * f
    return out


def exact_quotient(a: Any, b: Any) -> Polynomial | None:
    """`a / b` when it is a polynomial (b divides a over the rationals), else None.

    Multivariate division by one divisor in lex order: the remainder is zero exactly when b
    divides a, since one polynomial is a Groebner basis of the ideal it generates."""
    a, b = as_polynomial(a), as_polynomial(b)
    if not b:
        raise ZeroDivisionError(f"{a} / 0")
    if b.is_number:
        return a / b
    names = sorted(a.free_symbols | b.free_symbols)

    def leading(p: Polynomial) -> tuple[Monomial, Number]:
        return max(p._terms.items(), key=lambda mc: tuple(dict(mc[0]).get(n, 0) for n in names))

    lead_mono, lead_coeff = leading(b)
    quotient, rest = ZERO, a
    while rest:
        mono, coeff = leading(rest)
        exps = dict(mono)
        for name, e in lead_mono:
            if exps.get(name, 0) < e:
                return None
            exps[name] -= e
        step = Polynomial({tuple(sorted((n, e) for n, e in exps.items() if e)): _norm(Fraction(coeff) / lead_coeff)})
        quotient, rest = quotient + step, rest - step * b
    return quotient


def from_sympy(expr: Any) -> Polynomial:
    """A sympy polynomial (torch.export's SymInt expressions) as a Polynomial. Anything that
    is not one (FloorDiv, Mod, ceiling, a negative power) is refused with the expression."""
    import sympy

    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return constant(int(expr))
    if expr.is_Rational:
        return constant(Fraction(int(expr.p), int(expr.q)))
    if expr.is_Symbol:
        return symbol(expr.name)
    if expr.is_Add:
        return sum((from_sympy(a) for a in expr.args), ZERO)
    if expr.is_Mul:
        return product(from_sympy(a) for a in expr.args)
    if expr.is_Pow and expr.exp.is_Integer and int(expr.exp) >= 0:
        return from_sympy(expr.base) ** int(expr.exp)
    raise ValueError(
        f"size {expr} ({type(expr).__name__}) is not a polynomial in the workload symbols; "
        "helixplan sizes are sums of products of B, T, L and integers"
    )
