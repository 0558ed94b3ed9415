"""Metadata filters for /retrieve: a parsed JSON structure -> a LanceDB (DataFusion SQL) predicate.

    {"metadata.colour": "red"}                              equality (string, number or bool)
    {"metadata.n": {"$gte": 2, "$lt": 5}}                   $gt $gte $lt $lte (numbers), $ne, $in, $nin, $exists
    {"metadata.colour": {"$in": ["red", "blue"]}, "id": {"$ne": "x"}}   keys of one object: AND
    {"$or": [{...}, {...}]}  {"$and": [...]}  {"$not": {...}}

Fields are `id` or `metadata.<key>[.<key>...]`, keys of 1-64 characters from [A-Za-z0-9_-],
at most 4 deep. The SQL is never the user's text: field names are checked against that
pattern before they are placed in a JSONPath, and every value becomes a literal written
here (strings with quotes doubled, numbers finite, bools as true/false). Comparisons are
typed: "1" never equals 1, and a row whose value has another type (or lacks the key) simply
does not match ($ne and $nin match it), so no row's data can make the query fail.
"""

from __future__ import annotations

import json
import math
import re

KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DEPTH, MAX_NODES, MAX_IN = 4, 64, 100
COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


class FilterError(ValueError):
    """A filter that is not in the grammar; the message names the offending part."""


def sql_string(text: str) -> str:
    if not isinstance(text, str):
        raise FilterError(f"expected a string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError("strings must be valid UTF-8 (no lone surrogates)") from None
    if "\0" in text:
        raise FilterError("strings may not contain NUL")
    return "'" + text.replace("'", "''") + "'"


def _number(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FilterError(f"{where}: expected a finite number, got {value!r}")
    return repr(float(value))


def _scalar(value, where: str):
    if value is None or isinstance(value, (dict, list)):
        raise FilterError(f"{where}: values are strings, numbers or booleans (use $exists for presence), "
                          f"got {json.dumps(value)[:60]}")
    return value


class _Compiler:
    def __init__(self):
        self.nodes = 0

    def node(self, spec, where: str = "filter") -> str:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FilterError(f"filter: more than {MAX_NODES} conditions")
        if not isinstance(spec, dict) or not spec:
            raise FilterError(f"{where}: expected a non-empty object")
        parts = []
        for key, value in spec.items():
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{where}.{key}: expected a non-empty list of filters")
                subs = [self.node(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
                parts.append("(" + (" AND " if key == "$and" else " OR ").join(subs) + ")")
            elif key == "$not":
                parts.append(f"(NOT {self.node(value, where + '.$not')})")
            elif key.startswith("$"):
                raise FilterError(f"{where}: unknown operator {key!r} at the top of a filter")
            else:
                parts.append(self.field(key, value))
        return "(" + " AND ".join(parts) + ")"

    def field(self, name: str, cond) -> str:
        if name == "id":
            target = "id"
        elif name.startswith("metadata."):
            keys = name.split(".")[1:]
            if len(keys) > MAX_DEPTH or not all(KEY.fullmatch(k) for k in keys):
                raise FilterError(f"field {name[:80]!r}: metadata keys are 1-64 of [A-Za-z0-9_-], "
                                  f"at most {MAX_DEPTH} deep")
            target = "$" + "".join(f'["{k}"]' for k in keys)
        else:
            raise FilterError(f"field {name[:80]!r}: filter on 'id' or 'metadata.<key>'")
        ops = cond if isinstance(cond, dict) and cond and all(str(k).startswith("$") for k in cond) else {"$eq": cond}
        parts = []
        for op, value in ops.items():
            where = f"{name}.{op}"
            if op in ("$eq", "$ne"):
                test = self.equal(target, _scalar(value, where), where)
                parts.append(test if op == "$eq" else f"(NOT {test})")
            elif op in ("$in", "$nin"):
                if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN:
                    raise FilterError(f"{where}: expected a list of 1-{MAX_IN} values")
                test = "(" + " OR ".join(self.equal(target, _scalar(v, where), where) for v in value) + ")"
                parts.append(test if op == "$in" else f"(NOT {test})")
            elif op in COMPARE:
                if target == "id":
                    raise FilterError(f"{where}: ids compare with equality, $ne, $in and $nin only")
                parts.append(f"COALESCE({_num(target)} {COMPARE[op]} {_number(value, where)}, false)")
            elif op == "$exists":
                if not isinstance(value, bool) or target == "id":
                    raise FilterError(f"{where}: expected true or false on a metadata field")
                test = f"json_exists(metadata, {sql_string(target)})"
                parts.append(test if value else f"(NOT {test})")
            else:
                raise FilterError(f"{where}: unknown operator; use $eq $ne $in $nin $gt $gte $lt $lte $exists")
        return "(" + " AND ".join(parts) + ")"

    @staticmethod
    def equal(target: str, value, where: str) -> str:
        """A never-NULL boolean (so NOT works): typed equality of the field with `value`."""
        if target == "id":
            return f"COALESCE(id = {sql_string(value)}, false)"
        if isinstance(value, bool):  # JSON text of a bool is exactly true/false
            return f"COALESCE(json_extract(metadata, {sql_string(target)}) = '{str(value).lower()}', false)"
        if isinstance(value, (int, float)):
            return f"COALESCE({_num(target)} = {_number(value, where)}, false)"
        # a JSON string's text: the value as JSON (json.dumps renders it as Lance's JSONB does)
        return f"COALESCE(json_extract(metadata, {sql_string(target)}) = {sql_string(json.dumps(value, ensure_ascii=False))}, false)"


def _num(target: str) -> str:
    # JSON text of a number casts; of a string ('"2"'), a bool or an object it does not -> NULL
    return f"TRY_CAST(json_extract(metadata, {sql_string(target)}) AS DOUBLE)"


def compile_filter(spec) -> str:
    """JSON filter -> SQL predicate (raises FilterError naming what was wrong)."""
    return _Compiler().node(spec)
